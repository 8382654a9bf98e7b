#!/usr/bin/env bash
# Serving load benchmark (BENCHMARKS.md): 64 concurrent streamed chat requests, 128
# new tokens each, on bipo serve (unsteered; mixed over 8 distinct vectors and
# multipliers plus unsteered; the mixed requests one at a time, with their answers
# compared) and on llama.cpp's server (PyPI wheel xllamacpp, which cannot steer per
# request) with the same model and threads.
#   scripts/bench-serve.sh [MODEL.gguf] [THREADS]
# Needs a Python with xllamacpp==2026.10.11549 as $XLLAMACPP_PYTHON for the llama.cpp
# row (skipped with a note when unset).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
model=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
threads=${2:-2}
n=${BENCH_REQUESTS:-64}
tokens=${BENCH_TOKENS:-128}
cargo build --release -q
bipo=target/release/bipo
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 600); do curl -sf "$1/health" >/dev/null && return 0; sleep 0.1; done; echo "server at $1 did not start" >&2; return 1; }

# Eight distinct vectors: random directions with the norms of the happy control vector.
vecs=()
for i in 1 2 3 4 5 6 7 8; do
    $bipo -q baseline random --like assets/happy-control-vector.gguf --seed "$i" -o "$tmp/r$i.safetensors"
    vecs+=(--vector "r$i=$tmp/r$i.safetensors")
done
mixed="r1:1,r2:-1,r3:0.5,r4:-0.5,r5:1.5,r6:-1.5,r7:2,r8:-2,none"

port=$(free_port)
$bipo --threads "$threads" serve -m "$model" "${vecs[@]}" --port "$port" --max-batch 64 --max-queue 256 &
wait_up "http://127.0.0.1:$port"
url="http://127.0.0.1:$port"
$bipo bench-serve --url "$url" --requests "$n" --concurrency 64 --max-tokens "$tokens" --label "bipo unsteered"
$bipo bench-serve --url "$url" --requests "$n" --concurrency 64 --max-tokens "$tokens" --steering "$mixed" \
    --check-sequential --label "bipo mixed steering"
$bipo bench-serve --url "$url" --requests "$n" --concurrency 64 --max-tokens "$tokens" --label "bipo unsteered (again)"
kill %1; wait %1 2>/dev/null || true

if [ -n "${XLLAMACPP_PYTHON:-}" ]; then
    port=$(free_port)
    "$XLLAMACPP_PYTHON" - "$model" "$port" 64 "$threads" <<'PY' &
import sys, time, xllamacpp as x
p = x.CommonParams()
p.model.path, p.port, p.n_parallel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
p.n_ctx = 512 * p.n_parallel
p.cpuparams.n_threads = p.cpuparams_batch.n_threads = int(sys.argv[4])
p.cont_batching = True
s = x.Server(p)
while True:
    time.sleep(3600)
PY
    wait_up "http://127.0.0.1:$port"
    $bipo bench-serve --url "http://127.0.0.1:$port" --requests "$n" --concurrency 64 --max-tokens "$tokens" \
        --label "llama.cpp server (xllamacpp), unsteered"
else
    echo "note: set XLLAMACPP_PYTHON to a python with xllamacpp==2026.10.11549 for the llama.cpp row"
fi
