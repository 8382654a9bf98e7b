#!/usr/bin/env bash
# Opt-in tests on real checkpoints (not in CI): fetches every model, then runs the
# tests that compare bipo with llama.cpp on them (crates/bipo/tests/real_models.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-model.sh all
cargo test --release -p bipo --test real_models -- --ignored --nocapture --test-threads 1 "$@"
