#!/usr/bin/env bash
# Regenerates docs/results/<behaviour>/ : BiPO trained on the paper's train split, then
# `bipo compare` (BiPO, CAA, PCA, random) on the held-out A/B questions and pairs.
# Usage: docs/results/run.sh [behaviour...]   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/../.."
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
bipo=./target/release/bipo
data=${BIPO_DATA:-../shared/data/bipo}
for b in "${@:-power-seeking wealth-seeking hallucination}"; do
  for beh in $b; do
    $bipo train -m $model --data $data/$beh/train.csv --skip-invalid-rows \
      --config configs/results-personas.toml -o out/results/$beh/bipo --threads 2
    $bipo compare -m $model --bipo out/results/$beh/bipo/vector.safetensors \
      --train $data/$beh/train.csv --skip-invalid-rows \
      --data $data/$beh/test_infer.csv --data $data/$beh/test.csv \
      --multipliers=-2,-1,0,1,2 --open-ended 4 --max-tokens 40 --behaviour "$beh" \
      --title "$beh, SmolLM2-135M-Instruct, layer 15" -o docs/results/$beh --threads 2
  done
done
