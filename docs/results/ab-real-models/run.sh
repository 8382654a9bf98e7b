#!/usr/bin/env bash
# Does a real instruct checkpoint answer the paper's A/B persona questions above chance,
# and does BiPO move it? For each model: p(matching letter) and letter bias unsteered,
# then a short BiPO run on power-seeking (the first 128 training records, one epoch,
# batch 4, lr 0.01) and, on held-out `test_infer.csv` questions at multipliers -1, 0, +1:
#   0.5B: `bipo compare` (BiPO, CAA, PCA, random; 100 questions, 2 open-ended answers);
#   1.5B: `bipo baseline caa` + `bipo eval` of BiPO and CAA only (50 questions), which
#         is what fits in the time of a 2-vCPU session (~35 min).
# Usage: docs/results/ab-real-models/run.sh [model-name...]  (names as fetch-model.sh)
set -euo pipefail
cd "$(dirname "$0")/../../.."
bipo=./target/release/bipo
data=${BIPO_DATA:-../shared/data/bipo}/power-seeking
here=docs/results/ab-real-models
threads=${THREADS:-2}
mkdir -p out/ab
head -n 129 "$data/train.csv" > out/ab/train-128.csv
for name in "${@:-qwen2.5-coder-0.5b qwen2.5-coder-1.5b}"; do
  for n in $name; do
    case $n in
      qwen2.5-coder-0.5b) model=models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf layer=11 ;;
      qwen2.5-coder-1.5b) model=models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf layer=13 ;;
      *) echo "unknown model name $n" >&2; exit 2 ;;
    esac
    scripts/fetch-model.sh "$n"
    if [ ! -f "out/ab/$n/bipo/vector.safetensors" ]; then
      $bipo train -m "$model" --data out/ab/train-128.csv --skip-invalid-rows \
        --layer "$layer" --epochs 1 --batch-size 4 --lr 0.01 --warmup-steps 4 \
        -o "out/ab/$n/bipo" --force --threads "$threads"
    fi
    title="power-seeking A/B, $n, layer $layer"
    if [ "$n" = qwen2.5-coder-0.5b ]; then
      $bipo compare -m "$model" --bipo "out/ab/$n/bipo/vector.safetensors" \
        --train out/ab/train-128.csv --skip-invalid-rows \
        --data "$data/test_infer.csv" --limit 100 --multipliers=-1,0,1 \
        --no-damage --open-ended 2 --max-tokens 40 --behaviour power-seeking \
        --title "$title" -o "$here/$n" --threads "$threads"
    else
      mkdir -p "$here/$n"
      $bipo baseline caa -m "$model" --data out/ab/train-128.csv --skip-invalid-rows \
        --layer "$layer" -o "out/ab/$n/caa.safetensors" --threads "$threads"
      $bipo eval -m "$model" -v "out/ab/$n/bipo/vector.safetensors" -v "out/ab/$n/caa.safetensors" \
        --data "$data/test_infer.csv" --limit 50 --multipliers=-1,0,1 \
        --no-damage --open-ended 0 --title "$title" -o "$here/$n" --threads "$threads"
    fi
  done
done
