"""Check a shard directory and print its statistics: `distill-inspect` (tools/inspect_shards.py).

    distill-inspect DIR [--verify] [--decode N] [--max_seq_length 128 512]

Sizes are always checked against the manifest (a manifest that lists no shard is refused);
--verify also checks every sha256 and each shard's recorded largest id; every id is checked
against the vocabulary size (the first one outside it is named with its shard and offset).
--decode N prints the first N training windows as text (needs the tokenizer named in the
manifest to be loadable). The flags are InspectConfig's fields, spelled --flag_name or --flag-name.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np

from .cli_args import add_arguments, option
from .errors import DistillError
from .paths import model_load_error
from .shards import ShardSet, first_id_out_of_range

MIN_SEQ_LEN = 3  # a window is CLS + at least one token + SEP


def shard_statistics(shards: ShardSet, seq_lens=(128, 512)) -> dict:
    """Documents, tokens, document lengths and window counts, in one pass over the memmaps.

    An id outside the vocabulary raises ShardError naming the shard and the offset (as ShardSet's verify does).
    """
    sep = int(shards.tokenizer["sep_token_id"])
    lengths = []
    used = np.zeros(int(shards.tokenizer["vocab_size"]), dtype=bool)
    for i in range(len(shards.shards)):
        arr = np.asarray(shards.shard(i))
        if (bad := first_id_out_of_range(arr, used.size)) is not None:
            raise shards.id_error(shards.directory / shards.shards[i]["file"], bad, int(arr[bad]))
        ends = np.flatnonzero(arr == sep)
        lengths.append(np.diff(np.concatenate([[-1], ends])) - 1)  # ids per document, SEP excluded
        used[np.unique(arr)] = True
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    return {
        "shards": len(shards.shards),
        "documents": int(lengths.size),
        "tokens": shards.num_tokens,
        "bytes": shards.num_tokens * shards.dtype.itemsize,
        "dtype": shards.manifest["dtype"],
        "doc_tokens_mean": float(lengths.mean()) if lengths.size else 0.0,
        "doc_tokens_median": float(np.median(lengths)) if lengths.size else 0.0,
        "doc_tokens_max": int(lengths.max()) if lengths.size else 0,
        "vocab_used": int(used.sum()),
        "vocab_size": int(shards.tokenizer["vocab_size"]),
        "windows": {L: -(-shards.num_tokens // (L - 2)) for L in seq_lens},  # L - 2 stream tokens per window
    }


def report(directory: str, shards: ShardSet, st: dict, verified: bool) -> str:
    """The statistics as printed: one line per quantity."""
    tok = shards.tokenizer
    lines = [
        f"{directory}: {'sha256 verified' if verified else 'sizes checked'}",
        f"  tokenizer   {tok['name_or_path']} (vocab {tok['vocab_size']}, {st['vocab_used']} ids used)",
        f"  shards      {st['shards']} x {st['dtype']}, {st['bytes'] / 2**20:.1f} MiB, "
        f"{st['bytes'] / max(st['tokens'], 1):.2f} bytes/token",
        f"  documents   {st['documents']:,}  (tokens each: mean {st['doc_tokens_mean']:.0f}, "
        f"median {st['doc_tokens_median']:.0f}, max {st['doc_tokens_max']:,})",
        f"  tokens      {st['tokens']:,}",
    ]
    lines += [f"  windows@{L:<4d} {n:,}" for L, n in st["windows"].items()]
    return "\n".join(lines)


def print_windows(shards: ShardSet, seq_len: int, count: int) -> None:
    """The first `count` training windows of length `seq_len`, decoded (at most 300 characters each)."""
    from transformers import AutoTokenizer

    from .data import WindowDataset

    name = shards.tokenizer["name_or_path"]
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as e:  # moved or deleted since the build, a hub name not reachable
        raise model_load_error("--decode: the manifest's tokenizer", name, e) from e
    ds = WindowDataset(shards, seq_len, verify=False)  # checked already: sizes, ids, and with --verify checksums
    for i in range(min(count, len(ds))):
        ids = ds[i]["input_ids"][ds[i]["attention_mask"].bool()].tolist()
        print(f"  window {i}: {tokenizer.decode(ids)[:300]!r}")


@dataclass
class InspectConfig:
    """What `distill-inspect` checks and prints."""

    directory: str = option("a shard directory written by tools/pretokenize.py", positional=True)
    verify: bool = option("check every shard's sha256 too", default=False)
    max_seq_length: list[int] = option("training window lengths (tokens, [CLS] and [SEP] included) to count the "
                                       "windows of", default_factory=lambda: [128, 512], metavar="N",
                                       deprecated=("seq_len",))
    decode: int = option("print the first N windows (of the first length) as text", default=0, metavar="N")


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's parser, generated from InspectConfig."""
    p = argparse.ArgumentParser(prog=prog or os.path.basename(sys.argv[0]), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_arguments(p, InspectConfig)


def parse_args(argv: list[str] | None = None) -> InspectConfig:
    return InspectConfig(**vars(parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    too_short = [L for L in args.max_seq_length if L < MIN_SEQ_LEN]
    if too_short:
        print(f"error: --max_seq_length {too_short[0]} is too small: a window holds CLS, at least one token and "
              f"SEP; pass --max_seq_length {MIN_SEQ_LEN} or more", file=sys.stderr)
        return 2
    try:
        shards = ShardSet(args.directory, verify=args.verify)
        statistics = shard_statistics(shards, args.max_seq_length)
        print(report(args.directory, shards, statistics, args.verify))
        if args.decode:
            print_windows(shards, args.max_seq_length[0], args.decode)
    except DistillError as e:  # ShardError, a tokenizer that cannot be loaded; a bug is not caught (exit 1)
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0
