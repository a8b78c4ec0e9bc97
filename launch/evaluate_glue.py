"""Fine-tune a model on GLUE / reviews / your own task over a grid, then print the summary table.

    python launch/evaluate_glue.py MODEL_DIR --tasks sst2 mrpc --learning_rate 1e-5 3e-5 \
        --epochs 3 5 --seeds 42 43 --output_dir results
    python launch/evaluate_glue.py summary results --aggregation best

The same command as `distill-evaluate` (distill.evaluation.cli; the flags: EvaluationConfig).
Exit status: 0 done; 1 some runs failed (the others finished); 2 bad input (nothing trained).
"""
import sys
from pathlib import Path

# Python puts this script's folder first on the import path, where launch/distill.py would hide the
# installed `distill` package: leave that entry out. Nothing is added.
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

from distill.evaluation.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
