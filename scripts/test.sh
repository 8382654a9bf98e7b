#!/usr/bin/env bash
# The project's test command: fetch the default model if absent, then run every test.
# Set BIPO_LLAMA_CPP_BIN to llama.cpp's bin folder to include the real-llama.cpp
# interop tests (crates/bipo-cli/tests/llamacpp_interop.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-model.sh
if [ -z "${BIPO_LLAMA_CPP_BIN:-}" ]; then
    echo "skipped: llama.cpp interop tests run as no-ops; set BIPO_LLAMA_CPP_BIN to llama.cpp's bin folder to run them"
fi
t0=$SECONDS
cargo test --release --workspace "$@"
echo "[test.sh] cargo test: $((SECONDS - t0)) s"
# The library example (train on in-code pairs, generate): two steps, to see it run.
cargo run --release -q -p bipo --example steer -- models/SmolLM2-135M-Instruct.Q4_1.gguf 2 >/dev/null
# The Python package (crates/bipo-py): maturin wheel into a throwaway venv, pytest.
t0=$SECONDS
scripts/test-python.sh
echo "[test.sh] Python package: $((SECONDS - t0)) s"
