"""Score frozen embeddings of one or more models on each task with MTEB (mteb.evaluate), no fine-tuning.

    python launch/evaluate_embeddings.py assets/teacher runs/minilm/student --tasks reviews --output_dir results
    python launch/evaluate_embeddings.py runs/minilm/student --mteb_tasks Banking77Classification  # hub data
    python launch/evaluate_glue.py summary results      # the same table as the fine-tuning grid's

The same command as `distill-evaluate-embeddings` (distill.evaluation.embedding_eval; the flags:
EmbeddingEvaluationConfig). Exit status: 0 done; 2 bad input (nothing written).
"""
import sys
from pathlib import Path

# Python puts this script's folder first on the import path, where launch/distill.py would hide the
# installed `distill` package: leave that entry out. Nothing is added.
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

from distill.evaluation.embedding_eval import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
