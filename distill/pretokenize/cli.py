"""Tokenize raw text into distill token shards: many processes, streaming, resumable.

    distill-pretokenize --tokenizer_name google-bert/bert-base-uncased \\
        --input corpus/ more.jsonl.gz --output_dir shards/
    distill-pretokenize --tokenizer_name assets/teacher --dataset wikitext \\
        --dataset_config wikitext-103-raw-v1 --split train --output_dir shards-wiki/

A document is a block of lines between blank lines in a .txt (.txt.gz) file, or the
--text_field of a row in .jsonl / .jsonl.gz / .parquet / .arrow files, a directory written by
`datasets.save_to_disk`, or a `datasets` hub dataset (streamed). Directories expand to the
supported files inside them, sorted, recursively. Documents are read in a fixed order: inputs
as given, files sorted, rows in file order.

Each document is tokenized without special tokens (a literal "[SEP]" in the text stays text)
and followed by the SEP id. Shards close at the first document boundary at or past
--shard_tokens and appear under their final name only when complete; manifest.json is
written last. The output is byte-identical whatever --num_workers is. Re-run an interrupted
command unchanged to resume it; re-running a finished one does nothing. Ctrl-C stops it with one
line saying what was kept (exit 130): the finished shards, or nothing (no directory is left
behind by a build that finished no shard). An input file given twice (or inside a directory also
given) is refused, as are inputs without text and an empty --output_dir.
Every flag is a field of PretokenizeConfig, spelled --flag_name or --flag-name; the former
names of two of them still work, with a note. (tools/pretokenize.py runs the same command from a checkout.)
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, dataclass

from ..cli_args import add_arguments, option
from ..errors import DistillError
from .build import DEFAULT_BATCH_CHARS, DEFAULT_SHARD_TOKENS, build, interrupted_message, summary
from .inputs import DEFAULT_MAX_DOC_CHARS, SUPPORTED
from .output import PROGRESS_NAME

__all__ = ["PretokenizeConfig", "parser", "parse_args", "main"]


@dataclass
class PretokenizeConfig:
    """One build: the command's flags. `build` takes the same settings (tokenizer=, output=, inputs= for the
    first three)."""

    tokenizer_name: str = option("a tokenizer directory with tokenizer.json, or a hub name (the teacher's tokenizer)",
                                 metavar="NAME_OR_PATH", deprecated=("tokenizer",))
    output_dir: str = option("the shard directory to write (created if missing)", metavar="DIR",
                             deprecated=("output",))
    input: list[str] | None = option(f"files or directories to read, in this order; supported: {SUPPORTED}",
                                     default=None, metavar="PATH")
    dataset: str | None = option("instead of --input: a `datasets` hub dataset (or builder directory), streamed: "
                                 "nothing is downloaded whole", default=None, metavar="NAME")
    dataset_config: str | None = option("the --dataset configuration (for example wikitext-103-raw-v1)",
                                        default=None, metavar="C")
    split: str | None = option("the split to read: required with --dataset, and for a saved DatasetDict",
                               default=None, metavar="S")
    text_field: str = option("the field holding the text in jsonl / parquet / arrow / datasets rows (default: text)",
                             default="text", metavar="F")
    num_workers: int | None = option("tokenizer processes (default: all cores); "
                                     "1 tokenizes in the main process; the output does not depend on it",
                                     default=None, metavar="N")
    shard_tokens: int = option(f"tokens per shard: a shard closes at the first document boundary at or past T "
                               f"(default: {DEFAULT_SHARD_TOKENS:,} = 256 MiB of uint16); it is also the resume "
                               "granularity", default=DEFAULT_SHARD_TOKENS, metavar="T")
    dtype: str = option("on-disk token type (default: uint16, 2 bytes; uint32 for vocabularies over 65,536 ids)",
                        default="uint16", choices=("uint16", "uint32"))
    overwrite: bool = option(f"delete this tool's files in --output_dir (manifest.json, {PROGRESS_NAME}, "
                             "shard-*.bin) first", default=False)
    batch_chars: int = option(f"characters of text per task sent to a worker (default: {DEFAULT_BATCH_CHARS:,})",
                              default=DEFAULT_BATCH_CHARS, metavar="C")
    max_doc_chars: int = option(f"a longer document is stored as several documents of at most C characters, cut "
                                f"before the last space, tab or newline of each window (default: "
                                f"{DEFAULT_MAX_DOC_CHARS:,}); this bounds memory whatever the document sizes (the "
                                "tokenizer takes ~100 bytes per character it is given at once; .txt documents are "
                                "cut while read)", default=DEFAULT_MAX_DOC_CHARS, metavar="C")
    no_progress: bool = option("no progress bar on stderr", default=False)


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's parser, generated from PretokenizeConfig; prog: the name it was run by (distill-pretokenize,
    pretokenize.py)."""
    p = argparse.ArgumentParser(prog=prog or os.path.basename(sys.argv[0]), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_arguments(p, PretokenizeConfig)


def parse_args(argv: list[str] | None = None) -> PretokenizeConfig:
    return PretokenizeConfig(**vars(parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = asdict(args)
    show_progress = not settings.pop("no_progress")
    try:
        result = build(tokenizer=settings.pop("tokenizer_name"), output=settings.pop("output_dir"),
                       inputs=settings.pop("input"), **settings, show_progress=show_progress,
                       command=[sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    except DistillError as e:  # PretokenizeError; a bug is not caught (traceback, exit 1)
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # one line, no traceback; a build that finished no shard left nothing behind
        print(interrupted_message(args.output_dir), file=sys.stderr)
        return 130
    print(summary(result, args.output_dir))
    return 0
