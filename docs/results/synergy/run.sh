#!/usr/bin/env bash
# Regenerates docs/results/synergy/: the paper's vector synergy (its Fig. 5) on the
# default model. The committed BiPO power-seeking and wealth-seeking vectors (layer 15,
# docs/results/<behaviour>/vectors/bipo.safetensors) and their sum (`bipo vector
# combine`), each measured on both behaviours' held-out pairs (first 100 of test.csv)
# at multipliers -1, 0, +1, with damage on neutral text.
set -euo pipefail
cd "$(dirname "$0")/../../.."
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
bipo=${BIPO_BIN:-./target/release/bipo}
data=${BIPO_DATA:-../shared/data/bipo}
out=docs/results/synergy
mkdir -p $out/vectors
$bipo vector combine -o $out/vectors/power+wealth.safetensors \
  docs/results/power-seeking/vectors/bipo.safetensors:1 docs/results/wealth-seeking/vectors/bipo.safetensors:1
$bipo vector compare docs/results/power-seeking/vectors/bipo.safetensors \
  docs/results/wealth-seeking/vectors/bipo.safetensors > $out/cosine.txt
for beh in power-seeking wealth-seeking; do
  $bipo eval -m $model \
    -v docs/results/power-seeking/vectors/bipo.safetensors:power \
    -v docs/results/wealth-seeking/vectors/bipo.safetensors:wealth \
    -v $out/vectors/power+wealth.safetensors:power+wealth \
    --data $data/$beh/test.csv --limit 100 --multipliers=-1,0,1 --open-ended 0 \
    --title "synergy on $beh: power, wealth and their sum (SmolLM2-135M-Instruct)" \
    -o $out/$beh --threads 2 -q
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rows = ["| vector | power-seeking margin -1 / 0 / +1 | wealth-seeking margin -1 / 0 / +1 | KL at +1 |",
        "|---|---|---|---|"]
reps = {b: json.load(open(f"{out}/{b}/report.json")) for b in ["power-seeking", "wealth-seeking"]}
for name in ["power", "wealth", "power+wealth"]:
    cells = []
    for b in ["power-seeking", "wealth-seeking"]:
        v = next(v for v in reps[b]["vectors"] if v["name"] == name)
        m = {p["multiplier"]: p["value"] for p in v["pref_margin"]}
        cells.append(f"{m[-1.0]:.2f} / {m[0.0]:.2f} / {m[1.0]:.2f}")
        kl = {p["multiplier"]: p["value"] for p in v["kl"]}
    rows.append(f"| {name} | {cells[0]} | {cells[1]} | {kl[1.0]:.4f} |")
open(f"{out}/results.md", "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
