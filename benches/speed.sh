#!/usr/bin/env bash
# Prompt (128 tokens) and decode (64 tokens) speed, side by side in one run: bipo,
# native llama.cpp (llama-bench), and the PyPI wheel xllamacpp, same threads.
#   LLAMA_BIN=path/to/llama.cpp/build/bin PYTHON=python-with-xllamacpp \
#     benches/speed.sh THREADS MODEL.gguf...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
threads="$1"; shift
for m in "$@"; do
    echo "== $m ($threads threads, $(date -u +%F))"
    target/release/bipo bench -m "$m" --threads "$threads" --prompt-tokens 128 --gen-tokens 64 --repeats 5 | sed 's/^/bipo: /'
    if [ -n "${LLAMA_BIN:-}" ]; then
        LD_LIBRARY_PATH="$LLAMA_BIN" "$LLAMA_BIN/llama-bench" -m "$m" -t "$threads" -p 128 -n 64 -r 5 -o md 2>/dev/null \
            | grep -E "pp128|tg64" | sed 's/^/llama-bench: /'
    fi
    if [ -n "${PYTHON:-}" ]; then
        "$PYTHON" benches/xllamacpp_bench.py "$m" "$threads" 2>/dev/null | tail -1 | sed 's/^/xllamacpp: /'
    fi
done
