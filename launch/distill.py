"""MiniLMv2 distillation with DeepSpeed: parse, build, train (distill.cli.main).

    deepspeed launch/distill.py --teacher google-bert/bert-base-uncased --data shards/ \
        --deepspeed_config ds_configs/single_gpu_bf16.json --output_dir runs/minilm

Every flag is a field of distill.config.DistillConfig (`--help` lists them).
"""
import sys
from pathlib import Path

# Python puts this script's folder first on the import path, where this file, named like the package,
# would hide the installed `distill` package: leave that entry out. Nothing is added.
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

from distill.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
