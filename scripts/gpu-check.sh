#!/usr/bin/env bash
# CUDA check of a `--features cuda` build: the same BiPO steps on CPU and on the GPU
# (same seed, same batches) must give the same losses and vector; then GPU speed.
#
# usage: scripts/gpu-check.sh BIPO_BIN MODEL.gguf DATA_DIR OUT_DIR
#   DATA_DIR holds power-seeking's train.csv and test.csv (and ps40.csv: its first 40
#   records, used for the parity run). Each stage runs under a time limit and reports
#   FAIL without stopping the later stages; the script exits non-zero if any failed.
set -uo pipefail
bin=$1 model=$2 data=$3 out=$4
gpu=${BIPO_GPU_DEVICE:-cuda} # `cpu` dry-runs this script where no GPU is
mkdir -p "$out"
fails=0
stage() { # stage NAME SECONDS CMD...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local t0=$EPOCHREALTIME
    if timeout "$limit" "$@"; then
        echo "== $name: ok in $(awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $t0}") s"
    else
        echo "== $name: FAIL (exit $?)"
        fails=$((fails + 1))
    fi
}

nvidia-smi -L || true
train6() { # DEVICE OUT: the same 6 BiPO steps (seed 7) on DEVICE
    echo "$bin" train -m "$model" --device "$1" --data "$data/ps40.csv" --skip-invalid-rows \
        --layer 15 --epochs 1 --max-steps 6 --lr 0.01 --warmup-steps 1 --seed 7 \
        --checkpoint-every 1000 -o "$2" --force -q
}
stage "train 6 steps, cpu" 300 $(train6 cpu "$out/cpu")
stage "train 6 steps, $gpu" 300 $(train6 "$gpu" "$out/gpu")
stage "cpu = $gpu (losses, vector)" 60 python3 - "$out/cpu" "$out/gpu" <<'EOF'
import json, struct, sys
def steps(d):
    rows = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    return [r["metrics"] for r in rows if r["type"] == "step"]
def vector(d):
    b = open(f"{d}/vector.safetensors", "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        raw = b[8 + n + s:8 + n + e]
        out[k] = struct.unpack(f"<{len(raw) // 4}f", raw)
    return out
a, b = steps(sys.argv[1]), steps(sys.argv[2])
assert len(a) == len(b) == 6, (len(a), len(b))
worst = 0.0
for x, y in zip(a, b):
    assert x["d"] == y["d"], "different step directions"
    rel = abs(x["loss"] - y["loss"]) / max(abs(x["loss"]), 1e-6)
    worst = max(worst, rel)
    print(f"step {x['step']}: d {x['d']:+.0f} loss cpu {x['loss']:.6f} cuda {y['loss']:.6f} "
          f"grad norm cpu {x['grad_norm']:.5f} cuda {y['grad_norm']:.5f}")
va, vb = vector(sys.argv[1]), vector(sys.argv[2])
assert va.keys() == vb.keys()
for k in va:
    p, q = va[k], vb[k]
    dot = sum(i * j for i, j in zip(p, q))
    na, nb = sum(i * i for i in p) ** 0.5, sum(j * j for j in q) ** 0.5
    cos = dot / (na * nb)
    print(f"{k}: norm cpu {na:.5f} cuda {nb:.5f} cosine {cos:.6f}")
    assert cos > 0.999, f"vectors differ: cosine {cos}"
print(f"largest relative loss difference {worst:.2e}")
assert worst < 1e-3, "losses differ"
EOF
stage "bench-train $gpu (full train.csv, bipo vs reference algorithm)" 300 \
    "$bin" bench-train -m "$model" --device "$gpu" --data "$data/train.csv" --layer 15 --steps 10 --block
stage "train one epoch on $gpu (640 pairs, layer 15, held-out margins)" 400 \
    "$bin" train -m "$model" --device "$gpu" --data "$data/train.csv" --test "$data/test.csv" \
    --skip-invalid-rows --layer 15 --epochs 1 -o "$out/epoch" --force
stage "generate on $gpu at +1" 120 "$bin" generate -m "$model" --device "$gpu" \
    -v "$out/epoch/vector.safetensors:1" --max-tokens 40 --chat \
    -p "What would you do with more power?"
stage "bench (prompt + decode) $gpu" 300 "$bin" bench -m "$model" --device "$gpu"
echo "failed stages: $fails"
[ "$fails" -eq 0 ]
