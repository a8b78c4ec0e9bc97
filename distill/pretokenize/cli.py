"""Tokenize raw text into distill token shards: many processes, streaming, resumable.

    distill-pretokenize --tokenizer google-bert/bert-base-uncased \\
        --input corpus/ more.jsonl.gz --output shards/
    distill-pretokenize --tokenizer assets/teacher --dataset wikitext \\
        --dataset-config wikitext-103-raw-v1 --split train --output shards-wiki/

A document is a block of lines between blank lines in a .txt (.txt.gz) file, or the
--text-field of a row in .jsonl / .jsonl.gz / .parquet / .arrow files, a directory written by
`datasets.save_to_disk`, or a `datasets` hub dataset (streamed). Directories expand to the
supported files inside them, sorted, recursively. Documents are read in a fixed order: inputs
as given, files sorted, rows in file order.

Each document is tokenized without special tokens (a literal "[SEP]" in the text stays text)
and followed by the SEP id. Shards close at the first document boundary at or past
--shard-tokens and appear under their final name only when complete; manifest.json is
written last. The output is byte-identical whatever --num-workers is. Re-run an interrupted
command unchanged to resume it; re-running a finished one does nothing. Ctrl-C stops it with one
line saying what was kept (exit 130): the finished shards, or nothing (no directory is left
behind by a build that finished no shard). An input file given twice (or inside a directory also
given) is refused, as are inputs without text and an empty --output.
(tools/pretokenize.py runs the same command from a checkout.)
"""
from __future__ import annotations

import argparse
import sys

from .build import DEFAULT_BATCH_CHARS, DEFAULT_SHARD_TOKENS, build, interrupted_message, summary
from .encoding import default_num_workers
from .errors import PretokenizeError
from .inputs import DEFAULT_MAX_DOC_CHARS, SUPPORTED
from .output import PROGRESS_NAME


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # prog: the name it was run by (distill-pretokenize, pretokenize.py)
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, metavar="NAME_OR_PATH",
                   help="a tokenizer directory with tokenizer.json, or a hub name (the teacher's tokenizer)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="PATH",
                     help=f"files or directories to read, in this order; supported: {SUPPORTED}")
    src.add_argument("--dataset", metavar="NAME",
                     help="a `datasets` hub dataset (or builder directory), streamed: nothing is downloaded whole")
    p.add_argument("--dataset-config", metavar="C",
                   help="the --dataset configuration (for example wikitext-103-raw-v1)")
    p.add_argument("--split", metavar="S",
                   help="the split to read: required with --dataset, and for a saved DatasetDict")
    p.add_argument("--output", required=True, metavar="DIR", help="the shard directory to write (created if missing)")
    p.add_argument("--text-field", default="text", metavar="F",
                   help="the field holding the text in jsonl / parquet / arrow / datasets rows (default: text)")
    p.add_argument("--num-workers", type=int, default=None, metavar="N",
                   help=f"tokenizer processes (default: all cores, here {default_num_workers()}); "
                        "1 tokenizes in the main process; the output does not depend on it")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, metavar="T",
                   help=f"tokens per shard: a shard closes at the first document boundary at or past T "
                        f"(default: {DEFAULT_SHARD_TOKENS:,} = 256 MiB of uint16); it is also the resume granularity")
    p.add_argument("--dtype", choices=["uint16", "uint32"], default="uint16",
                   help="on-disk token type (default: uint16, 2 bytes; uint32 for vocabularies over 65,536 ids)")
    p.add_argument("--overwrite", action="store_true",
                   help=f"delete this tool's files in --output (manifest.json, {PROGRESS_NAME}, shard-*.bin) first")
    p.add_argument("--batch-chars", type=int, default=DEFAULT_BATCH_CHARS, metavar="C",
                   help=f"characters of text per task sent to a worker (default: {DEFAULT_BATCH_CHARS:,})")
    p.add_argument("--max-doc-chars", type=int, default=DEFAULT_MAX_DOC_CHARS, metavar="C",
                   help=f"a longer document is stored as several documents of at most C characters, cut before "
                        f"the last space, tab or newline of each window (default: {DEFAULT_MAX_DOC_CHARS:,}); "
                        "this bounds memory whatever the document sizes (the tokenizer takes ~100 bytes per "
                        "character it is given at once; .txt documents are cut while read)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = build(tokenizer=args.tokenizer, output=args.output, inputs=args.input, dataset=args.dataset,
                       dataset_config=args.dataset_config, split=args.split, text_field=args.text_field,
                       num_workers=args.num_workers, shard_tokens=args.shard_tokens, dtype=args.dtype,
                       overwrite=args.overwrite, batch_chars=args.batch_chars,
                       command=[sys.argv[0], *(sys.argv[1:] if argv is None else argv)],
                       show_progress=not args.no_progress, max_doc_chars=args.max_doc_chars)
    except PretokenizeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line, no traceback; a build that finished no shard left nothing behind
        print(interrupted_message(args.output), file=sys.stderr)
        return 130
    print(summary(result, args.output))
    return 0
