#!/usr/bin/env bash
# The project's test command: fetch the default model if absent, then run every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-model.sh
cargo test --release --workspace "$@"
