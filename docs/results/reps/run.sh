#!/usr/bin/env bash
# Regenerates docs/results/reps/<behaviour>/ : RePS trained with the same settings as
# the BiPO vectors of docs/results/<behaviour>/ (same data, layer, steps, lr, seed),
# then `bipo compare` of BiPO, RePS, CAA, PCA, mean-centring and random on the
# held-out A/B questions and pairs. For the project's optimism data both BiPO and RePS
# are trained here with configs/demo-optimism.toml (the README's main job).
# Usage: docs/results/reps/run.sh [behaviour...]  (default: power-seeking optimism wealth-seeking)
set -euo pipefail
cd "$(dirname "$0")/../../.."
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
bipo=${BIPO_BIN:-./target/release/bipo}
data=${BIPO_DATA:-../shared/data/bipo}
for beh in ${@:-power-seeking optimism wealth-seeking}; do
  if [ "$beh" = optimism ]; then
    train=data/optimism/train.csv cfg=configs/demo-optimism.toml
    evaldata=(--data data/optimism/test.csv)
    $bipo train -m $model --data $train --config $cfg -o out/reps/$beh/bipo --force --threads 2 -q
    bipo_vec=out/reps/$beh/bipo/vector.safetensors
  else
    train=$data/$beh/train.csv cfg=configs/results-personas.toml
    evaldata=(--data $data/$beh/test_infer.csv --data $data/$beh/test.csv)
    bipo_vec=docs/results/$beh/vectors/bipo.safetensors
  fi
  $bipo train -m $model --data $train --skip-invalid-rows --config $cfg --method reps \
    -o out/reps/$beh/reps --force --threads 2 -q
  $bipo compare -m $model --bipo $bipo_vec --reps out/reps/$beh/reps/vector.safetensors \
    --train $train --skip-invalid-rows "${evaldata[@]}" \
    --multipliers=-2,-1,0,1,2 --open-ended 4 --max-tokens 40 --behaviour "$beh" \
    --title "$beh: BiPO vs RePS (same settings), SmolLM2-135M-Instruct" \
    -o docs/results/reps/$beh --threads 2 -q
  mkdir -p docs/results/reps/$beh/reps-train
  cp out/reps/$beh/reps/run.json out/reps/$beh/reps/metrics.jsonl docs/results/reps/$beh/reps-train/
done
