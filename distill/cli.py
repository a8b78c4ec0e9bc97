"""The command line of a distillation run: parse the flags, train, report bad input as `error: ...`, exit 2.

    deepspeed launch/distill.py --teacher google-bert/bert-base-uncased --data shards/ \
        --deepspeed_config ds_configs/single_gpu_bf16.json --output_dir runs/minilm

Every flag is a field of distill.config.DistillConfig (`--help` lists them). Exit status: 0 trained (or stopped by
a signal, saved); 1 a bug in distill (Python's traceback); 2 bad input (`error: ...`, a `distill.errors.DistillError`);
3 the run diverged (`error: the run diverged: ...`, naming the last good checkpoint); 130 Ctrl-C outside the loop.
"""
from __future__ import annotations

import sys

from .config import config_from_args
from .errors import DistillError


def main(argv: list[str] | None = None) -> int:
    """Run `launch/distill.py`'s job; 0 on success, 2 on a setting or data problem (message on stderr), 3 when the
    run diverged (DivergedError), 130 on Ctrl-C before or after the training loop (one line, no traceback). Any other
    exception is a bug: it propagates (traceback, exit 1)."""
    cfg = None
    try:
        cfg = config_from_args(argv)
        from .trainer import train

        train(cfg)
    except DistillError as e:  # ConfigError, ShardError, ... (2); DivergedError (3)
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # outside the training loop, whose Ctrl-C saves a checkpoint and exits 0
        where = f" in {cfg.output_dir}" if cfg is not None else ""
        print(f"interrupted (Ctrl-C): stopped; every checkpoint already saved{where} is complete (continue with "
              "--resume auto), unfinished files are discarded", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
