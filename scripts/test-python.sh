#!/usr/bin/env bash
# The Python package's tests: builds the extension with maturin (from PyPI) into a
# throwaway venv, installs the wheel, runs pytest on the default model. Part of
# scripts/test.sh; needs python3 with venv and network access to PyPI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-model.sh >/dev/null
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q "maturin>=1.5,<2" "numpy>=1.21" pytest tqdm pandas
# `cargo test --workspace --release` (scripts/test.sh) has built the CLI the tests
# compare with; building it again alone would resolve other dependency features and
# recompile candle and bipo.
[ -x target/release/bipo ] || cargo build --release -q -p bipo-cli
"$venv/bin/maturin" build --release --strip -q -m crates/bipo-py/Cargo.toml -o "$venv/wheels"
wheel=$(ls "$venv"/wheels/*.whl)
echo "wheel: $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB)"
"$venv/bin/pip" install -q "$wheel"
"$venv/bin/python" -X importtime -c "import bipo" 2> "$venv/importtime.txt"
echo "import bipo: $(tail -1 "$venv/importtime.txt" | awk -F'|' '{printf "%.1f ms cumulative", $2/1000}')"
BIPO_BIN="$PWD/target/release/bipo" "$venv/bin/python" -m pytest -q -p no:cacheprovider crates/bipo-py/tests
