#!/usr/bin/env bash
# Fetches TruthfulQA (Lin et al. 2022, Apache-2.0) from PyPI — the `bigbench==1.0.0`
# source package carries it as bigbench/benchmark_tasks/truthful_qa/questions.json
# (299 questions, each with true answers, false answers and a best answer) — checks the
# sha256 of the download and of the file, and writes bipo's formats into
# out/data/truthfulqa/ (temp folder + rename; idempotent):
#
#   train.csv       BiPO/CAA training pairs: (question, true answer, false answer), the
#                   i-th true answer with the i-th false one, for the train questions
#   test_mc.jsonl   multiple choice for `bipo eval --data` (MC1 / MC2): per test
#                   question {"question", "correct": [best, other true...], "incorrect"}
#   test.csv        held-out pairs (question, best answer, first false answer)
#
# Split: the questions are shuffled with Python's random.Random(0) and the first 150
# are train, the other 149 test — fixed before anything was measured.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/out/data/truthfulqa"
SDIST_SHA=1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2
QUESTIONS_SHA=e4f3f864512c0d72f873fb8d3df6aa27bf62c118f7b61150166f270f6b00e4f6
[ -f "$DEST/test_mc.jsonl" ] && { echo "$DEST"; exit 0; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --no-binary :all: bigbench==1.0.0 -d "$tmp" >&2
sdist="$tmp/bigbench-1.0.0.tar.gz"
echo "$SDIST_SHA  $sdist" | sha256sum --check --status || { echo "error: $sdist: sha256 mismatch" >&2; exit 1; }
tar -xzf "$sdist" -C "$tmp" bigbench-1.0.0/bigbench/benchmark_tasks/truthful_qa/questions.json
q="$tmp/bigbench-1.0.0/bigbench/benchmark_tasks/truthful_qa/questions.json"
echo "$QUESTIONS_SHA  $q" | sha256sum --check --status || { echo "error: $q: sha256 mismatch" >&2; exit 1; }
mkdir -p "$tmp/out"
python3 - "$q" "$tmp/out" <<'PY'
import csv, json, random, sys
qs = json.load(open(sys.argv[1]))["examples"]
out = sys.argv[2]
order = list(range(len(qs)))
random.Random(0).shuffle(order)
train, test = order[:150], order[150:]

def answers(e):
    best = e["Best answer"]
    true = [best] + [t for t in e["True answers"] if t != best]
    return true, e["False answers"]

with open(f"{out}/train.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["question", "matching", "not_matching"])
    n = 0
    for i in train:
        t, fa = answers(qs[i])
        for a, b in zip(t, fa):
            w.writerow([qs[i]["Question"], a, b]); n += 1
with open(f"{out}/test_mc.jsonl", "w") as f:
    for i in test:
        t, fa = answers(qs[i])
        f.write(json.dumps({"question": qs[i]["Question"], "correct": t, "incorrect": fa}) + "\n")
with open(f"{out}/test.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["question", "matching", "not_matching"])
    for i in test:
        t, fa = answers(qs[i])
        w.writerow([qs[i]["Question"], t[0], fa[0]])
print(f"{len(qs)} questions: {len(train)} train ({n} pairs), {len(test)} test", file=sys.stderr)
PY
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.tmp" && mv "$tmp/out" "$DEST.tmp" && mv "$DEST.tmp" "$DEST"
echo "$DEST"
