#!/usr/bin/env bash
# Regenerates docs/results/truthfulqa/: the paper's truthfulness experiment on the
# default model. TruthfulQA from PyPI (scripts/fetch-truthfulqa.sh: bigbench 1.0.0's
# 299 questions, split 150 train / 149 test by a fixed seed); BiPO trained on the train
# questions' (true answer, false answer) pairs with the persona settings
# (configs/results-personas.toml: layer 15, one epoch, lr 0.01 — not tuned on
# TruthfulQA); then `bipo compare` (BiPO vs CAA, PCA, mean-centring, random, and the
# prompting baseline configs/prompts/truthfulqa.toml) on the 149 test questions as
# multiple choice (MC1, MC2) and as held-out pairs (best answer vs first false answer).
set -euo pipefail
cd "$(dirname "$0")/../../.."
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
bipo=${BIPO_BIN:-./target/release/bipo}
d=$(scripts/fetch-truthfulqa.sh)
out=docs/results/truthfulqa
$bipo train -m $model --data $d/train.csv --config configs/results-personas.toml \
  -o out/truthfulqa/bipo --force --threads 2 -q
$bipo compare -m $model --bipo out/truthfulqa/bipo/vector.safetensors --train $d/train.csv \
  --data $d/test_mc.jsonl --data $d/test.csv --multipliers=-2,-1,0,1,2 \
  --prompts configs/prompts/truthfulqa.toml --open-ended 4 --max-tokens 40 \
  --behaviour "truthfulness" \
  --title "TruthfulQA: BiPO vs baselines and prompting, SmolLM2-135M-Instruct" \
  -o $out --threads 2 -q
mkdir -p $out/bipo-train
cp out/truthfulqa/bipo/run.json out/truthfulqa/bipo/metrics.jsonl $out/bipo-train/
