"""The command line of a distillation run: parse the flags, train, report bad input as `error: ...`, exit 2.

    deepspeed launch/distill.py --teacher google-bert/bert-base-uncased --data shards/ \
        --deepspeed_config ds_configs/single_gpu_bf16.json --output_dir runs/minilm

Every flag is a field of distill.config.DistillConfig (`--help` lists them).
"""
from __future__ import annotations

import sys

from .config import config_from_args
from .shards import ShardError


def main(argv: list[str] | None = None) -> int:
    """Run `launch/distill.py`'s job; 0 on success, 2 on a setting or data problem (message on stderr)."""
    from .trainer import train

    try:
        train(config_from_args(argv))
    except (ValueError, ShardError, FileNotFoundError, FloatingPointError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
