#!/usr/bin/env bash
# Opt-in: the real `openai` Python client (from PyPI, into a throwaway venv) against
# `bipo serve` on the default model. Needs network access to PyPI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-model.sh
cargo build --release -q
venv=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q "openai>=1.40"
BIPO_API_KEY=test-key target/release/bipo serve -m models/SmolLM2-135M-Instruct.Q4_1.gguf \
    --vector happy=assets/happy-control-vector.gguf --model-id smol --port "$port" &
pid=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.1
done
"$venv/bin/python" scripts/openai_client_check.py "http://127.0.0.1:$port/v1" test-key
kill -TERM "$pid"
wait "$pid"
echo "server stopped cleanly on SIGTERM"
