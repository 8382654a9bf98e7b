#!/usr/bin/env bash
# The README's main job: fetch the default model, build bipo, and show steered
# generation with the happy control vector at multipliers -4, 0 and +4.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-model.sh
cargo build --release --quiet
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
VECTOR=assets/happy-control-vector.gguf
for prompt in "How are you feeling today?" "Describe your morning in two sentences."; do
    for m in -4 0 4; do
        echo "=== multiplier $m | $prompt"
        target/release/bipo generate --model "$MODEL" --chat --prompt "$prompt" \
            --vector "$VECTOR:$m" --max-tokens 60
        echo
    done
done
