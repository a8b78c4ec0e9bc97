"""Pretokenization: raw text -> distill token shards, with many processes, streaming, resumable.

`build` does it (`distill-pretokenize`, `main`, is its command line; cli.py documents the
behaviour). Modules, in the order a build uses them: inputs (what is read, in which order),
encoding (the tokenizer and its spawned worker processes), output (start / resume / refuse an
output directory), build (the steps, and the manifest written with distill.shards), cli (the flags).
"""
# Worker processes are spawned and import this package: every module's top level imports only the
# standard library, numpy and distill.shards, so that each worker stays small.
from .build import DEFAULT_BATCH_CHARS, DEFAULT_SHARD_TOKENS, BuildResult, build, summary
from .cli import main, parse_args
from .encoding import IN_FLIGHT_PER_WORKER, BatchEncoder, TokenizerSpec, encode_stream, load_tokenizer
from .errors import PretokenizeError
from .inputs import DEFAULT_MAX_DOC_CHARS, DocumentReader, Source, resolve_inputs, split_long
from .output import PROGRESS_FORMAT, PROGRESS_NAME

__all__ = [
    "DEFAULT_BATCH_CHARS", "DEFAULT_MAX_DOC_CHARS", "DEFAULT_SHARD_TOKENS", "IN_FLIGHT_PER_WORKER",
    "PROGRESS_FORMAT", "PROGRESS_NAME",
    "BatchEncoder", "BuildResult", "DocumentReader", "PretokenizeError", "Source", "TokenizerSpec",
    "build", "encode_stream", "load_tokenizer", "main", "parse_args", "resolve_inputs", "split_long", "summary",
]
