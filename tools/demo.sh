#!/usr/bin/env bash
# `make demo`: the main job end to end on the offline defaults, on whatever hardware is here.
#   1. pretokenize the default corpus into uint16 shards and print their statistics
#   2. distil the offline teacher into a smaller student with DeepSpeed, then export it
#   3. the teacher, the distilled student, the same student sliced from the teacher but never distilled, and a
#      random student on `reviews`: fine-tuned, and scored from frozen embeddings; one table
# (make has fetched the offline assets first.) DEMO_STEPS sets the distillation steps.
set -euo pipefail
OUT="${1:-demo}"
PY="${PYTHON:-.venv/bin/python}"
ASSETS="${ASSETS:-assets}"
STEPS="${DEMO_STEPS:-200}"
BIN="$(dirname "$PY")"
export TOKENIZERS_PARALLELISM=false
export DISTILL_ASSETS="$ASSETS"  # where --eval_task reviews finds the reviews table
mkdir -p "$OUT"

# Default corpus: State of the Union + Brown (npm); the review texts when npm was missing.
corpus=()
for d in "$ASSETS/corpus/sotu" "$ASSETS/corpus/brown"; do [ -d "$d" ] && corpus+=("$d"); done
[ ${#corpus[@]} -gt 0 ] || corpus=("$ASSETS/corpus/reviews.jsonl")

echo "== 1/3 pretokenize: ${corpus[*]} -> $OUT/shards"
"$PY" tools/pretokenize.py --tokenizer_name "$ASSETS/teacher" --input "${corpus[@]}" --output_dir "$OUT/shards"
"$PY" tools/inspect_shards.py "$OUT/shards" --verify --decode 2

# All GPUs when there are some; one process on CPU (2 gloo ranks on 2 cores are slower than 1).
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  launcher=("$BIN/deepspeed"); batch=64
else
  launcher=("$BIN/deepspeed" --num_gpus 1); batch=16
fi
# The student keeps the teacher's width and half its layers (initialised from layers 2, 4, 6).
echo "== 2/3 distil $ASSETS/teacher (6 x 384) into a 3 x 384 student, $STEPS steps -> $OUT/run"
"${launcher[@]}" --master_port "${MASTER_PORT:-29533}" launch/distill.py \
  --teacher "$ASSETS/teacher" --data "$OUT/shards" --output_dir "$OUT/run" --resume auto \
  --student_layer 3 --student_hidden_size 384 --student_attention_heads 12 --num_relation_heads 48 \
  --max_seq_length 128 --per_device_train_batch_size "$batch" --learning_rate 2e-4 \
  --warmup_steps $((STEPS / 10)) --max_steps "$STEPS" --logging_steps 10 --save_steps 100 --save_total_limit 2 \
  --dataloader_num_workers 1 --eval_steps 100 --eval_task reviews --eval_samples 500
echo "TensorBoard: $BIN/tensorboard --logdir $OUT/run/tensorboard"

echo "== 3/3 the teacher, the distilled, the sliced (undistilled) and a random student on reviews"
"$PY" tools/demo_table.py --teacher "$ASSETS/teacher" --student "$OUT/run/student" \
  --reviews "$ASSETS/reviews/reviews.parquet" --output_dir "$OUT/eval"
