#!/usr/bin/env bash
# Regenerates docs/results/multilayer/: BiPO on the project's optimism pairs with the
# demo's settings (configs/demo-optimism.toml: 4 epochs, lr 0.01) at the same step
# budget, steering block 12 alone, block 16 alone, and blocks 12 and 16 jointly; the
# held-out (data/optimism/test.csv) log-prob margins at multipliers -1, 0, +1 from each
# run's test-margins file, collected into results.md.
set -euo pipefail
cd "$(dirname "$0")/../../.."
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
bipo=${BIPO_BIN:-./target/release/bipo}
out=docs/results/multilayer
for layers in 12 16 12,16; do
  $bipo train -m $model --data data/optimism/train.csv --test data/optimism/test.csv \
    --config configs/demo-optimism.toml --layer $layers -o out/multilayer/L$layers \
    --force --threads 2 -q
  mkdir -p $out/L$layers
  cp out/multilayer/L$layers/{run.json,metrics.jsonl,test-margins.json,vector.safetensors} $out/L$layers/
done
python3 - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
rows = ["| layers | margin at -1 | at 0 | at +1 | +1 minus -1 | vector norm |",
        "|---|---|---|---|---|---|"]
for l in ["12", "16", "12,16"]:
    m = {r["multiplier"]: r["mean_margin"] for r in json.load(open(f"{out}/L{l}/test-margins.json"))}
    steps = [json.loads(x) for x in open(f"{out}/L{l}/metrics.jsonl")]
    last = [s for s in steps if s["type"] == "step"][-1]["metrics"]
    rows.append(f"| {l} | {m[-1.0]:.3f} | {m[0.0]:.3f} | {m[1.0]:.3f} | {m[1.0] - m[-1.0]:+.3f} | {last['vector_norm']:.3f} |")
open(f"{out}/results.md", "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
EOF
