#!/usr/bin/env bash
# Opt-in: bipo.hf.apply against transformers on every model-family fixture (logits
# within 1e-4 of bipo's). Needs torch + transformers, a multi-GB download, so it is not
# part of scripts/test.sh. Uses $BIPO_HF_PYTHON (an interpreter that already has torch
# and transformers; the bipo wheel is installed into its environment) or else makes a
# throwaway venv and installs them from PyPI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${BIPO_HF_PYTHON:-}" ]; then
    py="$BIPO_HF_PYTHON"
else
    python3 -m venv "$work/venv"
    py="$work/venv/bin/python"
    "$py" -m pip install -q torch transformers
fi
"$py" -m pip install -q "maturin>=1.5,<2" "numpy>=1.21" pytest
"$py" -m maturin build --release --strip -q -m crates/bipo-py/Cargo.toml -o "$work/wheels"
"$py" -m pip install -q --force-reinstall --no-deps "$work"/wheels/*.whl
"$py" -m pytest -q -p no:cacheprovider crates/bipo-py/tests_hf
