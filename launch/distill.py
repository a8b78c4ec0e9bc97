"""MiniLMv2 distillation with DeepSpeed: parse, build, train.

    deepspeed launch/distill.py --teacher google-bert/bert-base-uncased --data shards/ \
        --deepspeed_config ds_configs/single_gpu_bf16.json --output_dir runs/minilm

Every flag is a field of distill.config.DistillConfig (`--help` lists them).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from distill.config import config_from_args  # noqa: E402
from distill.shards import ShardError  # noqa: E402
from distill.trainer import train  # noqa: E402


def main(argv=None) -> int:
    try:
        cfg = config_from_args(argv)
        train(cfg)
    except (ValueError, ShardError, FileNotFoundError, FloatingPointError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
