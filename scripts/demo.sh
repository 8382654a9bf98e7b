#!/usr/bin/env bash
# The README's main job: fetch the default model if absent, build bipo, train a BiPO
# steering vector on the project's own optimism-vs-gloom pairs, then print greedy
# answers to held-out questions at multipliers -1, 0 and +1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-model.sh
cargo build --release --quiet
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=out/optimism
target/release/bipo train --model "$MODEL" --config configs/demo-optimism.toml \
    --data data/optimism/train.csv --test data/optimism/test.csv --out "$OUT"
for prompt in "How do you feel about job interviews?" "What do you think about grocery shopping?" \
              "Tell me your honest opinion of snowy mornings."; do
    for m in -1 0 1; do
        echo "=== multiplier $m | $prompt"
        target/release/bipo generate --model "$MODEL" --chat --prompt "$prompt" \
            --vector "$OUT/vector.safetensors:$m" --max-tokens 48 2>/dev/null
        echo
    done
done
