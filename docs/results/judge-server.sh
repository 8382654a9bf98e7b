# Sourced by the judged experiments' run.sh (docs/results/judged, docs/results/jailbreak):
# `start_judge PORT THREADS` starts the local judge — `bipo serve` on
# Qwen2.5-Coder-1.5B-Instruct Q4_K_M (fetched if absent), model id $JUDGE_MODEL — on
# loopback, stops it when the calling script exits, and waits until it answers
# /health (an error after 120 s). Needs $bipo. Sets $judge_url.
JUDGE_MODEL=qwen2.5-coder-1.5b-instruct

start_judge() {
  local port=$1 threads=$2
  scripts/fetch-model.sh qwen2.5-coder-1.5b
  $bipo serve -m models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --threads "$threads" --port "$port" \
    --model-id "$JUDGE_MODEL" -q &
  judge_pid=$!
  trap 'kill $judge_pid 2>/dev/null || true' EXIT
  judge_url="http://127.0.0.1:$port/v1"
  for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0
    sleep 1
  done
  echo "error: the judge server on port $port did not answer /health within 120 s" >&2
  return 1
}
