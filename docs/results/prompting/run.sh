#!/usr/bin/env bash
# Regenerates docs/results/prompting/<behaviour>/: prompting as the baseline to beat
# (AxBench), on the default model. The committed BiPO and CAA vectors of
# docs/results/<behaviour>/vectors/ are measured beside the prompting baseline
# (configs/prompts/<behaviour>.toml, as the system prompt: -1 = the instruction against
# the behaviour, 0 = none, +1 = the instruction for it), and each vector on top of each
# instruction (--prompted). Held-out: the first 100 pairs of test.csv and 100 A/B
# questions of test_infer.csv; 2 open-ended answers per row. The prompts were written
# before any measurement and not tuned.
# Usage: docs/results/prompting/run.sh [behaviour...]  (default: power-seeking wealth-seeking)
set -euo pipefail
cd "$(dirname "$0")/../../.."
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
bipo=${BIPO_BIN:-./target/release/bipo}
data=${BIPO_DATA:-../shared/data/bipo}
for beh in ${@:-power-seeking wealth-seeking}; do
  $bipo eval -m $model \
    -v docs/results/$beh/vectors/bipo.safetensors:bipo -v docs/results/$beh/vectors/caa.safetensors:caa \
    --data $data/$beh/test_infer.csv --data $data/$beh/test.csv --limit 100 \
    --multipliers=-1,0,1 --prompts configs/prompts/$beh.toml --prompted \
    --open-ended 2 --max-tokens 40 --behaviour "$beh" \
    --title "$beh: BiPO and CAA vs prompting, and on top of prompts (SmolLM2-135M-Instruct)" \
    -o docs/results/prompting/$beh --threads 2 -q
done
