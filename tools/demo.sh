#!/usr/bin/env bash
# `make demo`: the main job end to end on the offline defaults.
#   1. (make) fetch the offline assets: teacher, corpus, labelled reviews
#   2. pretokenize the default corpus into uint16 shards and print their statistics
set -euo pipefail
OUT="${1:-demo}"
PY="${PYTHON:-.venv/bin/python}"
ASSETS="${ASSETS:-assets}"
mkdir -p "$OUT"

# Default corpus: State of the Union + Brown (npm); the review texts when npm was missing.
corpus=()
for d in "$ASSETS/corpus/sotu" "$ASSETS/corpus/brown"; do [ -d "$d" ] && corpus+=("$d"); done
[ ${#corpus[@]} -gt 0 ] || corpus=("$ASSETS/corpus/reviews.jsonl")

echo "== 1/1 pretokenize: ${corpus[*]} -> $OUT/shards"
"$PY" tools/pretokenize.py --tokenizer "$ASSETS/teacher" --input "${corpus[@]}" --output "$OUT/shards"
"$PY" tools/inspect_shards.py "$OUT/shards" --verify --decode 2
