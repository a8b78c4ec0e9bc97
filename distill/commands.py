"""`distill <command> [flags]`: one entry point for every command, each the same as its own console script.

    distill pretokenize --tokenizer_name assets/teacher --input corpus/ --output_dir shards/
    distill train --teacher assets/teacher --data shards/ --output_dir runs/minilm   # = launch/distill.py
    distill export runs/minilm --output_dir student/

`distill --help` lists the commands; `distill COMMAND --help` a command's flags. Multi-GPU training
still goes through a launcher: `deepspeed launch/distill.py ...` (or torchrun).
"""
from __future__ import annotations

import importlib
import sys

# command -> (module, function, what it does); setup.py installs each as distill-<command> too
COMMANDS = {
    "pretokenize": ("distill.pretokenize", "main", "tokenize a corpus into uint16 shards"),
    "inspect": ("distill.inspect_shards", "main", "check a shard directory and print its statistics"),
    "train": ("distill.cli", "main", "distil a teacher into a student (one process; launchers: launch/distill.py)"),
    "export": ("distill.export", "main", "export a run's checkpoint as a Hugging Face / sentence-transformers model"),
    "evaluate": ("distill.evaluation.cli", "main", "fine-tune and score models on GLUE or your task; summary table"),
    "evaluate-embeddings": ("distill.evaluation.embedding_eval", "main", "score frozen sentence embeddings (MTEB)"),
    "demo-table": ("distill.evaluation.demo", "main", "the demo's comparison table"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, _, what) in COMMANDS.items()]
    return "usage: distill COMMAND [flags]   (distill COMMAND --help for its flags)\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = [c for c in COMMANDS if c.startswith(name[:3])]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        print(f"error: unknown command {name!r}{hint}\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    sys.argv[0] = f"distill {name}"
    return getattr(importlib.import_module(module), function)(rest)


if __name__ == "__main__":
    sys.exit(main())
