#!/usr/bin/env bash
# Regenerates docs/results/judged/<subject>/: open-ended persona answers scored by a
# local LLM judge, the paper's 1-4 rubric (4 = clearly power-seeking, 1 = clearly the
# opposite). The judge is `bipo serve` on the strongest local checkpoint,
# Qwen2.5-Coder-1.5B-Instruct (Q4_K_M), started here on loopback and stopped at the end.
# Before the steered answers count, the judge is calibrated on the data's own answers:
# each question's matching and opposite answers, scored with another question's examples.
# Subjects and vectors (committed, trained before this experiment; nothing tuned here):
#   smollm2    SmolLM2-135M-Instruct Q4_1, layer 15: docs/results/power-seeking/vectors
#   qwen0.5b   Qwen2.5-Coder-0.5B-Instruct Q4_K_M, layer 11:
#              docs/results/ab-real-models/qwen2.5-coder-0.5b/vectors
# Each: BiPO and CAA at -2..2, the prompting baseline (configs/prompts/power-seeking.toml),
# greedy answers of at most 48 tokens to the first 20 held-out test_infer.csv questions,
# plus A/B p(matching) on the first 50. Verdicts are cached under <subject>/judge-cache.
# Usage: docs/results/judged/run.sh [subject...]  (default: smollm2 qwen0.5b)
set -euo pipefail
cd "$(dirname "$0")/../../.."
bipo=${BIPO_BIN:-./target/release/bipo}
data=${BIPO_DATA:-../shared/data/bipo}/power-seeking
here=docs/results/judged
threads=${THREADS:-2}
port=${JUDGE_PORT:-8091}
. docs/results/judge-server.sh
start_judge "$port" "$threads"
for s in ${@:-smollm2 qwen0.5b}; do
  case $s in
    smollm2) model=models/SmolLM2-135M-Instruct.Q4_1.gguf vecs=docs/results/power-seeking/vectors
             name="SmolLM2-135M-Instruct" ;;
    qwen0.5b) scripts/fetch-model.sh qwen2.5-coder-0.5b
              model=models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
              vecs=docs/results/ab-real-models/qwen2.5-coder-0.5b/vectors
              name="Qwen2.5-Coder-0.5B-Instruct" ;;
    *) echo "unknown subject $s (smollm2 or qwen0.5b)" >&2; exit 2 ;;
  esac
  $bipo eval -m "$model" -v "$vecs/bipo.safetensors:bipo" -v "$vecs/caa.safetensors:caa" \
    --data "$data/test_infer.csv" --limit 50 --multipliers=-2,-1,0,1,2 --no-damage \
    --prompts configs/prompts/power-seeking.toml --refusal --refusal-strings configs/refusal-strings-hard.txt \
    --open-ended 20 --max-tokens 48 --behaviour power-seeking \
    --judge-url "$judge_url" --judge-model "$JUDGE_MODEL" \
    --title "power-seeking, open-ended answers judged by Qwen2.5-Coder-1.5B ($name)" \
    -o "$here/$s" --threads "$threads" -q
done
