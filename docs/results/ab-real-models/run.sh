#!/usr/bin/env bash
# Does a real instruct checkpoint answer the paper's A/B persona questions above chance,
# and does BiPO move it? For each model: p(matching letter) and letter bias unsteered,
# then a short BiPO run on power-seeking (the first 128 training pairs, one epoch, batch
# 4) and `bipo compare` (BiPO, CAA, PCA, random on the same pairs) on the first 100
# held-out A/B questions at multipliers -1, 0, +1.
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
    $bipo train -m "$model" --data out/ab/train-128.csv --skip-invalid-rows \
      --layer "$layer" --epochs 1 --batch-size 4 --lr 0.01 --warmup-steps 4 \
      -o "out/ab/$n/bipo" --force --threads "$threads"
    $bipo compare -m "$model" --bipo "out/ab/$n/bipo/vector.safetensors" \
      --train out/ab/train-128.csv --skip-invalid-rows \
      --data "$data/test_infer.csv" --limit 100 --multipliers=-1,0,1 \
      --no-damage --open-ended 2 --max-tokens 40 --behaviour power-seeking \
      --title "power-seeking A/B, $n, layer $layer" -o "$here/$n" --threads "$threads"
  done
done
