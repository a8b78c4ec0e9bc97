#!/usr/bin/env python
"""Tokenize raw text into distill token shards: many processes, streaming, resumable.

    python tools/pretokenize.py --tokenizer google-bert/bert-base-uncased \\
        --input corpus/ more.jsonl.gz --output shards/
    python tools/pretokenize.py --tokenizer assets/teacher --dataset wikitext \\
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
command unchanged to resume it; re-running a finished one does nothing.
"""
from __future__ import annotations

# Worker processes are spawned and re-import this file as `__mp_main__`: its top level imports
# only the standard library and numpy, so that each worker stays small (no torch, transformers,
# pyarrow or datasets); everything else is imported where it is used.
import argparse
import codecs
import contextlib
import ctypes
import gzip
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

PROGRESS_NAME = ".progress.json"
PROGRESS_FORMAT = "distill-shards-progress"
DEFAULT_SHARD_TOKENS = 2**27  # 134M tokens: 256 MiB per uint16 shard, a resume point every few minutes
DEFAULT_BATCH_CHARS = 1 << 19  # text per task sent to a worker: ~0.1 s of work, IPC cost negligible at this size
IN_FLIGHT_PER_WORKER = 4  # tasks queued per worker: slack while the main process closes a shard (fsync)
READ_BLOCK = 1 << 22  # bytes read from a text file at a time
FILE_FORMATS = {  # file name ending -> reader
    ".txt": "txt", ".txt.gz": "txt", ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".parquet": "parquet", ".arrow": "arrow",
}
SUPPORTED = ", ".join(FILE_FORMATS) + ", a datasets save_to_disk directory, or a directory of these"
_OWN_FILE = re.compile(r"^(shard-\d{5,}\.bin|manifest\.json|\.progress\.json)$")
_OWN_TEMPORARY = re.compile(r"^\.(shard-\d{5,}\.bin|manifest\.json|\.progress\.json)\..*\.tmp$")
_SHARD_FILE = re.compile(r"^shard-(\d{5,})\.bin$")
# A blank-line separator: a newline, then one or more lines holding only whitespace.
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")
_SURROGATE = re.compile("[\ud800-\udfff]")


class PretokenizeError(Exception):
    """A problem with the inputs, the tokenizer or the output directory, with its fix."""


def default_num_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- inputs
def file_format(path: Path) -> str | None:
    name = path.name.lower()
    for ending, fmt in FILE_FORMATS.items():
        if name.endswith(ending):
            return fmt
    return None


@dataclass
class Source:
    """One --input argument (or the --dataset spec), expanded into what is read, in order."""

    label: str  # the path as given, or the dataset name: the key of per-input statistics
    identity: dict  # what a resumed run must find unchanged (path, size, mtime / dataset spec)
    files: list[tuple[Path, str]] = field(default_factory=list)  # (file, format); empty for a hub dataset
    hub: dict | None = None  # {"dataset", "config", "split"} for a hub (streamed) dataset
    ignored: list[str] = field(default_factory=list)  # files of a directory that are not read
    size: int = 0  # bytes to read, for the progress bar


def _stat_identity(path: Path, fmt: str) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "format": fmt, "size": st.st_size, "mtime": st.st_mtime}


def _listing_identity(root: Path, files: list[Path], fmt: str, **extra) -> dict:
    listing = hashlib.sha256()
    size, mtime = 0, 0.0
    for f in files:
        st = f.stat()
        size, mtime = size + st.st_size, max(mtime, st.st_mtime)
        listing.update(f"{f.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return {"path": str(root.resolve()), "format": fmt, **extra, "files": len(files), "size": size, "mtime": mtime,
            "listing_sha256": listing.hexdigest()}


def _saved_dataset_files(directory: Path, split: str | None) -> tuple[Path, list[Path], str | None]:
    """The arrow files of a `save_to_disk` directory (a Dataset, or a DatasetDict's `split`), in order."""
    if (directory / "dataset_dict.json").is_file():
        splits = json.loads((directory / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        if split is None:
            raise PretokenizeError(
                f"{directory} is a DatasetDict saved with save_to_disk, with splits {splits}; "
                "choose one with --split (for example --split train)"
            )
        if split not in splits:
            raise PretokenizeError(f"{directory} has no split {split!r}; its splits are {splits}: pass one with --split")
        directory = directory / split
    state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    files = [directory / entry["filename"] for entry in state.get("_data_files", [])]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise PretokenizeError(f"{directory}/state.json lists arrow files that are missing: {missing}; save the dataset again")
    return directory, files, split


def is_saved_dataset(directory: Path) -> bool:
    return (directory / "dataset_dict.json").is_file() or (
        (directory / "state.json").is_file() and (directory / "dataset_info.json").is_file())


def resolve_inputs(paths: Iterable[str], split: str | None = None) -> list[Source]:
    """Each --input expanded into the files it stands for, checked to exist and be readable."""
    sources = []
    for arg in paths:
        path = Path(arg)
        if not path.exists():
            raise PretokenizeError(f"input {arg!r} does not exist; check the path (supported inputs: {SUPPORTED})")
        if path.is_dir() and is_saved_dataset(path):
            data_dir, files, used_split = _saved_dataset_files(path, split)
            identity = _listing_identity(data_dir, files, "datasets", split=used_split)
            sources.append(Source(arg, identity, [(f, "arrow") for f in files], size=identity["size"]))
        elif path.is_dir():
            files, ignored = [], []
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = f.relative_to(path)
                if any(part.startswith(".") for part in rel.parts):
                    continue  # hidden files and directories: markers, caches, our own temporaries
                if file_format(f):
                    files.append(f)
                else:
                    ignored.append(rel.as_posix())
            if not files:
                found = ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else "") if ignored else "nothing"
                raise PretokenizeError(
                    f"input directory {arg!r} holds no supported file (found {found}); "
                    f"supported: {SUPPORTED}"
                )
            identity = _listing_identity(path, files, "directory")
            sources.append(Source(arg, identity, [(f, file_format(f)) for f in files], ignored=ignored,
                                  size=identity["size"]))
        else:
            fmt = file_format(path)
            if fmt is None:
                raise PretokenizeError(
                    f"input {arg!r} has an unsupported extension {''.join(path.suffixes) or '(none)'!r}; "
                    f"supported: {SUPPORTED}"
                )
            identity = _stat_identity(path, fmt)
            sources.append(Source(arg, identity, [(path, fmt)], size=identity["size"]))
    if not sources:
        raise PretokenizeError("no input given: pass --input PATH [PATH ...] or --dataset NAME --split SPLIT")
    if all(s.size == 0 for s in sources):
        raise PretokenizeError(f"the inputs are empty ({', '.join(s.label for s in sources)}): there is nothing to tokenize")
    return sources


def hub_source(name: str, config: str | None, split: str | None) -> Source:
    """A `datasets` dataset (hub name, or a local builder directory), streamed, never downloaded whole."""
    if not split:
        raise PretokenizeError(f"--dataset {name} needs --split (for example --split train)")
    spec = {"dataset": name, "config": config, "split": split}
    return Source(name, {"format": "hub", **spec}, hub=spec)


def _missing_field(where: str, text_field: str, found: Iterable[str]) -> PretokenizeError:
    found = sorted(found)
    hint = next((c for c in ("text", "content", "document", "body", "sentence") if c in found), None)
    suggestion = f"pass --text-field {hint}" if hint else "pass --text-field with the name of the column that holds the text"
    return PretokenizeError(f"{where} has no field {text_field!r} (its fields are {found}); {suggestion}")


def preflight(sources: list[Source], text_field: str) -> None:
    """Check that every file opens and has the text field, before anything is written."""
    for source in sources:
        if source.hub is not None:
            source.hub["stream"] = _open_hub(source.hub, text_field)
        for path, fmt in source.files:
            try:
                if fmt == "txt":
                    with _open_binary(path) as f:
                        f.read(1)
                elif fmt == "jsonl":
                    with _open_binary(path) as f:
                        for lineno, raw in enumerate(f, 1):
                            if raw.strip():
                                _row_text(raw.decode("utf-8-sig", "replace"), text_field, path, lineno)
                                break
                elif fmt == "parquet":
                    names = _parquet_file(path).schema_arrow.names
                    if text_field not in names:
                        raise _missing_field(f"{path}", text_field, names)
                elif fmt == "arrow":
                    with _ArrowBatches(path) as batches:
                        if text_field not in batches.schema.names:
                            raise _missing_field(f"{path}", text_field, batches.schema.names)
            except (OSError, EOFError) as e:
                raise PretokenizeError(f"cannot read {path}: {e}") from e


class _ReplacementCounter:
    """A UTF-8 error handler that replaces undecodable bytes with U+FFFD and counts them."""

    _serial = itertools.count()

    def __init__(self):
        self.count = 0
        self.errors = f"distill-pretokenize-{next(self._serial)}"
        codecs.register_error(self.errors, self._handle)

    def _handle(self, exc: UnicodeDecodeError):
        self.count += exc.end - exc.start
        return "\ufffd", exc.end


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a file that is not parquet
        raise PretokenizeError(f"{path} is not a readable parquet file: {e}") from e


class _ArrowBatches:
    """Record batches of an Arrow IPC file: the stream format (`datasets` files) or the file format.

    Read through a plain file, not a memory map, so only the batch in hand is resident.
    """

    def __init__(self, path: Path):
        import pyarrow as pa

        self.path, self._file = path, pa.OSFile(str(path))
        try:
            self._reader, self._random_access = pa.ipc.open_stream(self._file), False
        except pa.ArrowInvalid:
            self._file.seek(0)
            try:
                self._reader, self._random_access = pa.ipc.open_file(self._file), True
            except pa.ArrowInvalid as e:
                self._file.close()
                raise PretokenizeError(f"{path} is not an Arrow IPC file (stream or file format): {e}") from e
        self.schema = self._reader.schema

    def __iter__(self):
        if self._random_access:
            return (self._reader.get_batch(i) for i in range(self._reader.num_record_batches))
        return iter(self._reader)

    def tell(self) -> int:
        return self._file.tell()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def _row_text(line: str, text_field: str, path: Path, lineno: int) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise PretokenizeError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); fix or remove the line") from e
    if not isinstance(row, dict):
        raise PretokenizeError(f"{path}:{lineno}: a JSON {type(row).__name__}, not an object with a {text_field!r} field")
    if text_field not in row:
        raise _missing_field(f"{path}:{lineno}", text_field, row.keys())
    text = row[text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise PretokenizeError(
            f"{path}:{lineno}: field {text_field!r} holds a {type(text).__name__}, not text; "
            "pass --text-field with the field that holds the text"
        )
    return text


def _column_texts(column, counter: _ReplacementCounter, where: str, text_field: str) -> list[str]:
    import pyarrow as pa

    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            return [t if t is not None else "" for t in column.to_pylist()]
        except UnicodeDecodeError:  # a writer that did not validate UTF-8: decode it ourselves
            column = column.cast(pa.large_binary())
            kind = column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return [b.decode("utf-8", counter.errors) if b is not None else "" for b in column.to_pylist()]
    raise PretokenizeError(
        f"{where}: column {text_field!r} has type {kind}, not text; pass --text-field with the column that holds the text"
    )


class DocumentReader:
    """Every document of the inputs, in order, as str; counts bytes read and bytes replaced."""

    def __init__(self, sources: list[Source], text_field: str, on_progress: Callable[[int], None] = lambda n: None):
        self.sources, self.text_field, self.on_progress = sources, text_field, on_progress
        self.replaced = {s.label: _ReplacementCounter() for s in sources}
        self.bytes_read = 0  # of the inputs (compressed bytes for .gz), for the progress bar

    def _advance(self, done: int, position: int) -> None:
        self.bytes_read = done + position
        self.on_progress(self.bytes_read)

    def __iter__(self) -> Iterator[str]:
        for source in self.sources:
            counter = self.replaced[source.label]
            if source.hub is not None:
                yield from self._hub(source)
            for path, fmt in source.files:
                done = self.bytes_read
                yield from getattr(self, f"_{fmt}")(path, counter, lambda pos, done=done: self._advance(done, pos))
                self._advance(done, path.stat().st_size)

    def _decoded_blocks(self, path: Path, counter: _ReplacementCounter, at: Callable[[int], None]) -> Iterator[str]:
        """The file's text in blocks: UTF-8 (a BOM dropped, bad bytes replaced), newlines as "\\n"."""
        decoder = io.IncrementalNewlineDecoder(codecs.getincrementaldecoder("utf-8-sig")(counter.errors), translate=True)
        with open(path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if path.name.lower().endswith(".gz") else raw
            try:
                while True:
                    block = stream.read(READ_BLOCK)
                    text = decoder.decode(block, final=not block)
                    at(raw.tell())
                    if text:
                        yield text
                    if not block:
                        return
            except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
                raise PretokenizeError(f"cannot read {path}: {e}") from e

    def _txt(self, path: Path, counter: _ReplacementCounter, at) -> Iterator[str]:
        # Documents are blocks of non-blank lines. The text is split on runs of blank lines; the
        # last piece of each block may continue in the next one, so it is carried over. "\n\n"
        # stands for "a separator just ended": at the start of the file, and after a block that
        # ended inside a separator, so that blank lines at the start of the next block still count.
        carry = "\n\n"
        for block in self._decoded_blocks(path, counter, at):
            text = carry + block
            cut = text.rfind("\n") + 1
            if cut == 0:
                carry = text
                continue
            pieces = _BLANK_LINES.split(text[:cut])
            last = pieces.pop()
            yield from filter(None, pieces)  # empty pieces are the edges of separators, not documents
            carry = (last or "\n\n") + text[cut:]
        yield from filter(None, _BLANK_LINES.split(carry + "\n\n"))

    def _jsonl(self, path: Path, counter: _ReplacementCounter, at) -> Iterator[str]:
        carry, lineno = "", 0
        for block in self._decoded_blocks(path, counter, at):
            lines = (carry + block).split("\n")
            carry = lines.pop()
            for line in lines:
                lineno += 1
                if line.strip():
                    yield _row_text(line, self.text_field, path, lineno)
        if carry.strip():
            yield _row_text(carry, self.text_field, path, lineno + 1)

    def _parquet(self, path: Path, counter: _ReplacementCounter, at) -> Iterator[str]:
        pf = _parquet_file(path)
        if self.text_field not in pf.schema_arrow.names:
            raise _missing_field(f"{path}", self.text_field, pf.schema_arrow.names)
        total_rows, rows, size = max(pf.metadata.num_rows, 1), 0, path.stat().st_size
        for batch in pf.iter_batches(batch_size=4096, columns=[self.text_field]):
            yield from _column_texts(batch.column(0), counter, str(path), self.text_field)
            rows += batch.num_rows
            at(size * rows // total_rows)

    def _arrow(self, path: Path, counter: _ReplacementCounter, at) -> Iterator[str]:
        with _ArrowBatches(path) as batches:
            if self.text_field not in batches.schema.names:
                raise _missing_field(f"{path}", self.text_field, batches.schema.names)
            index = batches.schema.get_field_index(self.text_field)
            for batch in batches:
                yield from _column_texts(batch.column(index), counter, str(path), self.text_field)
                at(batches.tell())

    def _hub(self, source: Source) -> Iterator[str]:
        stream = source.hub.get("stream")  # opened by preflight
        if stream is None:
            stream = _open_hub(source.hub, self.text_field)
        for batch in stream.iter(batch_size=1000):
            if self.text_field not in batch:
                raise _missing_field(f"dataset {source.label!r}", self.text_field, batch.keys())
            for text in batch[self.text_field]:
                if text is not None and not isinstance(text, str):
                    raise PretokenizeError(
                        f"dataset {source.label!r}: field {self.text_field!r} holds a {type(text).__name__}, not text; "
                        "pass --text-field with the field that holds the text"
                    )
                yield text or ""


def _open_hub(spec: dict, text_field: str):
    try:
        import datasets
    except ImportError as e:
        raise PretokenizeError("--dataset needs the `datasets` package: pip install datasets") from e
    try:
        stream = datasets.load_dataset(spec["dataset"], spec["config"], split=spec["split"], streaming=True)
    except Exception as e:  # the hub client raises many types: name them all as one input problem
        raise PretokenizeError(
            f"cannot open dataset {spec['dataset']!r} (config {spec['config']!r}, split {spec['split']!r}): "
            f"{type(e).__name__}: {e}"
        ) from e
    features = getattr(stream, "features", None)
    if features is not None and text_field not in features:
        raise _missing_field(f"dataset {spec['dataset']!r}", text_field, features.keys())
    return stream


# --------------------------------------------------------------------------- tokenizer
@dataclass
class TokenizerSpec:
    info: dict  # the manifest's "tokenizer" entry
    json: str  # the backend (Rust) tokenizer, serialized: what the workers load
    max_id: int  # the largest id it can produce


def describe_tokenizer(tokenizer, name_or_path: str) -> TokenizerSpec:
    """The manifest entry and worker payload of a transformers tokenizer; refuses what cannot work."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not getattr(tokenizer, "is_fast", False) or not isinstance(backend, Tokenizer):
        raise PretokenizeError(
            f"tokenizer {name_or_path!r} ({type(tokenizer).__name__}) has no fast (Rust `tokenizers`) backend, "
            "which pretokenize needs for speed; use a tokenizer directory with a tokenizer.json "
            "(convert it once: AutoTokenizer.from_pretrained(name, use_fast=True).save_pretrained(dir))"
        )
    missing = [k for k in ("sep_token_id", "cls_token_id") if getattr(tokenizer, k, None) is None]
    if missing:
        raise PretokenizeError(
            f"tokenizer {name_or_path!r} has no {' and no '.join(k[:3].upper() + ' token' for k in missing)}: "
            "distill separates documents with SEP and starts each training window with CLS; "
            "use a BERT-family tokenizer (or set sep_token/cls_token in its tokenizer_config.json)"
        )
    canonical = Tokenizer.from_str(backend.to_str())
    canonical.no_truncation()  # saved tokenizer.json files often carry truncation/padding to 128 or 512
    canonical.no_padding()
    serialized = canonical.to_str()
    vocab_size = len(tokenizer)
    max_id = max([vocab_size - 1, *canonical.get_vocab(with_added_tokens=True).values()])
    lower = getattr(tokenizer, "do_lower_case", None)
    if lower is None:
        normalizer = json.loads(serialized).get("normalizer") or {}
        parts = normalizer.get("normalizers", [normalizer])
        lower = any(p.get("type") == "Lowercase" or p.get("lowercase") is True for p in parts if isinstance(p, dict))
    max_len = getattr(tokenizer, "model_max_length", None)
    info = {
        "name_or_path": str(name_or_path),
        "class": type(tokenizer).__name__,
        "vocab_size": vocab_size,
        "cls_token_id": int(tokenizer.cls_token_id),
        "sep_token_id": int(tokenizer.sep_token_id),
        "pad_token_id": None if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id),
        "mask_token_id": None if tokenizer.mask_token_id is None else int(tokenizer.mask_token_id),
        "do_lower_case": bool(lower),
        "model_max_length": int(max_len) if max_len is not None and max_len < 2**31 else None,  # None: unbounded
        "fingerprint": hashlib.sha256(serialized.encode("utf-8")).hexdigest(),
    }
    return TokenizerSpec(info, serialized, max_id)


def load_tokenizer(name_or_path: str) -> TokenizerSpec:
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as e:
        raise PretokenizeError("pretokenize needs `transformers` and `tokenizers`: pip install transformers") from e
    hf_logging.set_verbosity_error()
    if (os.path.isabs(name_or_path) or name_or_path.startswith((".", "~"))) and not Path(name_or_path).expanduser().exists():
        raise PretokenizeError(f"tokenizer directory {name_or_path!r} does not exist; pass a local directory holding "
                               "tokenizer.json (the teacher's directory), or a hub name when online")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as e:  # OSError, ValueError, hub errors: all mean "cannot load it"
        raise PretokenizeError(
            f"cannot load tokenizer {name_or_path!r}: {type(e).__name__}: {e}\n"
            "pass a local directory holding tokenizer.json (and tokenizer_config.json), or a hub name when online"
        ) from e
    local = Path(name_or_path)
    return describe_tokenizer(tokenizer, str(local.resolve()) if local.exists() else name_or_path)


# --------------------------------------------------------------------------- encoding (workers)
class BatchEncoder:
    """Texts -> (ids, lens): each text's ids followed by SEP, flat; lens[i] tokens for text i (0: no tokens).

    Uses the Rust tokenizer directly: no special tokens added, and special-token strings in the
    text are not matched ("[SEP]" in a document stays "[", "sep", "]").
    """

    def __init__(self, tokenizer_json: str, sep_id: int, dtype: str):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.tokenizer.encode_special_tokens = True
        self.sep = [int(sep_id)]
        self.dtype = np.dtype(dtype).newbyteorder("<")

    def _encode(self, texts: list[str]):
        try:
            return self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)  # ids only, no offsets
        except (TypeError, UnicodeEncodeError):  # lone surrogates (JSON "\udc80" escapes) are not UTF-8
            texts = [_SURROGATE.sub("\ufffd", t) for t in texts]
            return self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._encode(texts)
        lens = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
        lens += lens > 0  # + SEP; a text without tokens is dropped whole
        chunks = itertools.chain.from_iterable((e.ids, self.sep) for e in encodings if len(e))
        ids = np.fromiter(itertools.chain.from_iterable(chunks), dtype=self.dtype, count=int(lens.sum()))
        return ids, lens.astype(np.int32)


_WORKER_ENCODER: BatchEncoder | None = None  # one per worker process, set by _init_worker


def _exit_when_orphaned(parent: int) -> None:
    while True:
        if os.getppid() != parent:  # the main process died (SIGKILL included): do not linger
            os._exit(1)
        time.sleep(0.5)


def _init_worker(tokenizer_json: str, sep_id: int, dtype: str, parent: int) -> None:
    global _WORKER_ENCODER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: the workers are the parallelism
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle: it stops the pool
    if sys.platform.startswith("linux"):  # die with the main process, at once (PR_SET_PDEATHSIG = 1)
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()  # elsewhere, or if it died already
    _WORKER_ENCODER = BatchEncoder(tokenizer_json, sep_id, dtype)


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return _WORKER_ENCODER(texts)


@contextlib.contextmanager
def _single_threaded_tokenizers():
    """TOKENIZERS_PARALLELISM=false inside (the Rust library reads it at each batch call), restored after."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def encode_stream(batches: Iterable[tuple[list[str], object]], tokenizer: TokenizerSpec, dtype: str,
                  num_workers: int) -> Iterator[tuple[object, np.ndarray, np.ndarray]]:
    """(texts, meta) batches -> (meta, ids, lens), in input order.

    With several workers, at most IN_FLIGHT_PER_WORKER * num_workers batches are in flight, so
    reading never runs far ahead of tokenizing (Pool.imap would drain the whole input first).
    """
    args = (tokenizer.json, tokenizer.info["sep_token_id"], dtype)
    if num_workers <= 1:
        encoder = BatchEncoder(*args)
        with _single_threaded_tokenizers():  # one worker means one core, as --num-workers promises
            for texts, meta in batches:
                yield (meta, *encoder(texts))
        return
    # spawn, not fork: the parent has loaded the Rust tokenizer (its thread pool does not survive
    # a fork) and maybe torch; spawned workers import only numpy and tokenizers.
    context = multiprocessing.get_context("spawn")
    with context.Pool(num_workers, initializer=_init_worker, initargs=(*args, os.getpid())) as pool:
        window: deque = deque()
        for texts, meta in batches:
            window.append((meta, pool.apply_async(_encode_in_worker, (texts,))))
            if len(window) >= IN_FLIGHT_PER_WORKER * num_workers:
                meta, result = window.popleft()
                yield (meta, *result.get())
        while window:
            meta, result = window.popleft()
            yield (meta, *result.get())


# --------------------------------------------------------------------------- shards
def _fsync_dir(directory: Path) -> None:
    from distill.shards import _fsync_dir as fsync_dir

    fsync_dir(directory)


class ShardWriter:
    """Cuts the token stream into shards at the first document boundary at or past `shard_tokens`.

    The open shard is streamed to a temporary file (so memory does not grow with the shard),
    fsynced and renamed when complete; then `on_shard(entry, consumed)` records it, `consumed`
    being how many documents of the input stream the finished shards cover.
    """

    def __init__(self, directory: Path, dtype: str, shard_tokens: int, first_index: int,
                 on_shard: Callable[[dict, int], None]):
        self.directory, self.dtype, self.shard_tokens = directory, dtype, shard_tokens
        self.index, self.on_shard = first_index, on_shard
        self.documents_without_tokens = 0  # since the last finished shard
        self._file = None

    def _open(self) -> None:
        from distill.shards import _create_temporary, shard_name  # the temporaries of atomic_write_bytes

        self.name = shard_name(self.index)
        fd, self._tmp = _create_temporary(self.directory / self.name)
        self._file = os.fdopen(fd, "wb")
        self._sha = hashlib.sha256()
        self.tokens = self.documents = 0

    def _write(self, ids: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(ids)).cast("B")
        self._sha.update(data)
        self._file.write(data)
        self.tokens += ids.size

    def _close(self, consumed: int) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.directory / self.name)
        _fsync_dir(self.directory)  # the rename itself is durable before the progress file names the shard
        entry = {"file": self.name, "num_tokens": int(self.tokens), "num_documents": int(self.documents),
                 "sha256": self._sha.hexdigest()}
        self.index += 1
        self.on_shard(entry, consumed)

    def add(self, ids: np.ndarray, lens: np.ndarray, stream_index: np.ndarray) -> None:
        """Append a batch: `lens[i]` tokens (0: dropped) of the document at stream position `stream_index[i]`."""
        while lens.size:
            if self._file is None:
                self._open()
            ends = np.cumsum(lens)
            k = int(np.searchsorted(ends, self.shard_tokens - self.tokens))  # first doc reaching the target
            if k == lens.size:
                self._write(ids)
                self.documents += int(np.count_nonzero(lens))
                self.documents_without_tokens += int(lens.size - np.count_nonzero(lens))
                return
            cut = int(ends[k])
            self._write(ids[:cut])
            self.documents += int(np.count_nonzero(lens[: k + 1]))
            self.documents_without_tokens += int(k + 1 - np.count_nonzero(lens[: k + 1]))
            self._close(consumed=int(stream_index[k]) + 1)
            ids, lens, stream_index = ids[cut:], lens[k + 1:], stream_index[k + 1:]

    def finish(self, consumed: int) -> None:
        if self._file is not None and self.tokens:
            self._close(consumed)
        else:
            self.abandon()  # opened for documents that all had no tokens: no shard

    def abandon(self) -> None:
        if self._file is not None:
            self._file.close()
            os.unlink(self._tmp)
            self._file = None


# --------------------------------------------------------------------------- output directory
def identity_of(record: dict) -> dict:
    """What must match for a directory to be resumed or reused: from a manifest or a progress file."""
    return {"inputs": record.get("inputs"), "tokenizer": (record.get("tokenizer") or {}).get("fingerprint"),
            "text_field": record.get("text_field"), "shard_tokens": record.get("shard_tokens"),
            "dtype": record.get("dtype")}


def _describe_input(entry: dict) -> str:
    if entry.get("format") == "hub":
        return f"dataset {entry['dataset']} (config {entry['config']}, split {entry['split']})"
    if entry.get("format") in ("directory", "datasets"):
        return f"{entry['path']} ({entry['files']} files, {entry['size']} bytes, newest mtime {entry['mtime']})"
    return f"{entry.get('path')} ({entry.get('size')} bytes, mtime {entry.get('mtime')})"


def identity_differences(old: dict, new: dict, old_names: dict | None = None, new_names: dict | None = None) -> list[str]:
    diffs = []
    a, b = old.get("inputs") or [], new.get("inputs") or []
    if a != b:
        if len(a) != len(b) or any(x.get("path", x.get("dataset")) != y.get("path", y.get("dataset")) for x, y in zip(a, b)):
            diffs.append("inputs: built from [" + "; ".join(map(_describe_input, a)) + "], now ["
                         + "; ".join(map(_describe_input, b)) + "]")
        else:
            diffs += [f"input changed since: {_describe_input(x)} -> {_describe_input(y)}" for x, y in zip(a, b) if x != y]
    if old["tokenizer"] != new["tokenizer"]:
        was = (old_names or {}).get("name_or_path", "?")
        now = (new_names or {}).get("name_or_path", "?")
        diffs.append(f"tokenizer: built with {was!r} (fingerprint {str(old['tokenizer'])[:12]}), "
                     f"now {now!r} (fingerprint {str(new['tokenizer'])[:12]})")
    for key in ("text_field", "shard_tokens", "dtype"):
        if old[key] != new[key]:
            diffs.append(f"{key}: built with {old[key]!r}, now {new[key]!r}")
    return diffs


def own_files(directory: Path) -> list[Path]:
    """The files pretokenize writes in an output directory; nothing else there is ever touched."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and (_OWN_FILE.match(p.name) or _OWN_TEMPORARY.match(p.name)))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PretokenizeError(f"{path} is not valid JSON ({e}); pass --overwrite to rebuild the directory") from e


def _refuse(directory: Path, what: str, diffs: list[str]) -> PretokenizeError:
    return PretokenizeError(
        f"output directory {str(directory)!r} already holds {what} built from other settings:\n  - "
        + "\n  - ".join(diffs)
        + f"\npass --overwrite to replace them (it deletes only manifest.json, {PROGRESS_NAME}, shard-*.bin and "
          "their temporaries there), or choose another --output"
    )


@dataclass
class OutputState:
    complete: dict | None = None  # the manifest of a finished build with the same identity: nothing to do
    progress: dict | None = None  # else the progress record to continue (no shards when starting afresh)
    fresh: bool = False  # nothing of ours was there: a failure before the first shard leaves no trace
    created_dir: bool = False


def prepare_output(out: Path, record: dict, overwrite: bool) -> OutputState:
    """Decide what to do with the output directory: start, resume, nothing (complete), or refuse.

    `record` holds what identifies the build (inputs, tokenizer, text_field, shard_tokens, dtype).
    Writes the progress file (so that shards written next are known to be ours) unless complete.
    """
    from distill import shards as S

    if out.exists() and not out.is_dir():
        raise PretokenizeError(f"--output {str(out)!r} is a file; choose a directory")
    manifest_path, progress_path = out / S.MANIFEST_NAME, out / PROGRESS_NAME
    if overwrite:
        for p in own_files(out):
            p.unlink()
    identity = identity_of(record)
    manifest, progress = _read_json(manifest_path), _read_json(progress_path)
    if manifest is not None:
        diffs = identity_differences(identity_of(manifest), identity, manifest.get("tokenizer"), record["tokenizer"])
        if diffs:
            raise _refuse(out, "finished shards", diffs)
        try:
            S.ShardSet(out)  # sizes against the manifest: a complete directory is not rewritten
        except S.ShardError as e:
            raise PretokenizeError(f"{e}\n(pass --overwrite to rebuild {str(out)!r} from scratch)") from e
        if progress_path.exists():
            progress_path.unlink()  # left by a run killed between writing the manifest and cleaning up
        return OutputState(complete=manifest)
    state = OutputState(fresh=progress is None, created_dir=not out.exists())
    if progress is not None:
        if progress.get("format") != PROGRESS_FORMAT or progress.get("version") != S.FORMAT_VERSION:
            raise PretokenizeError(f"{progress_path} was not written by this version of pretokenize; "
                                   "pass --overwrite or choose another --output")
        diffs = identity_differences(identity_of(progress), identity, progress.get("tokenizer"), record["tokenizer"])
        if diffs:
            raise _refuse(out, "an unfinished build", diffs)
    else:
        strays = [p.name for p in own_files(out) if _SHARD_FILE.match(p.name)]
        if strays:
            raise _refuse(out, f"{len(strays)} shard files ({', '.join(strays[:3])}{' ...' if len(strays) > 3 else ''})",
                          [f"there is no {S.MANIFEST_NAME} or {PROGRESS_NAME} saying what they were built from"])
        progress = {"format": PROGRESS_FORMAT, "version": S.FORMAT_VERSION, **record, "shards": [],
                    "consumed_documents": 0, "documents_without_tokens": 0, "elapsed_seconds": 0.0}
    out.mkdir(parents=True, exist_ok=True)
    for p in own_files(out):
        if _OWN_TEMPORARY.match(p.name):
            p.unlink()  # half-written files of a killed run
    S.atomic_write_json(progress_path, progress)
    state.progress = progress
    return state


def _remove_trace(directory: Path, progress_path: Path, created_dir: bool) -> None:
    """Undo a build that failed before its first shard: its progress file, and the directory if it made it."""
    progress_path.unlink(missing_ok=True)
    if created_dir and not any(directory.iterdir()):
        directory.rmdir()


# --------------------------------------------------------------------------- the build
@dataclass
class BuildResult:
    manifest: dict
    already_complete: bool = False
    session_tokens: int = 0  # tokenized by this run (a resumed run skips the finished shards)
    session_seconds: float = 0.0
    num_workers: int = 1


def build(*, tokenizer: str, output: str, inputs: list[str] | None = None, dataset: str | None = None,
          dataset_config: str | None = None, split: str | None = None, text_field: str = "text",
          num_workers: int | None = None, shard_tokens: int = DEFAULT_SHARD_TOKENS, dtype: str = "uint16",
          overwrite: bool = False, batch_chars: int = DEFAULT_BATCH_CHARS, command: list[str] | None = None,
          log: Callable[[str], None] = print, show_progress: bool = True) -> BuildResult:
    """Tokenize `inputs` (or the hub `dataset`) into a shard directory; see the module docstring."""
    from distill import shards as S

    num_workers = default_num_workers() if num_workers is None else int(num_workers)
    if num_workers < 1:
        raise PretokenizeError(f"--num-workers must be at least 1, got {num_workers}")
    if shard_tokens < 1 or batch_chars < 1:
        raise PretokenizeError(f"--shard-tokens and --batch-chars must be at least 1, got {shard_tokens} and {batch_chars}")
    if bool(inputs) == bool(dataset):
        raise PretokenizeError("give either --input PATH [PATH ...] or --dataset NAME --split SPLIT (one of the two)")

    # 1. Inputs and tokenizer are checked before the output directory is touched.
    sources = [hub_source(dataset, dataset_config, split)] if dataset else resolve_inputs(inputs, split)
    preflight(sources, text_field)
    spec = load_tokenizer(tokenizer)
    try:
        np_dtype = S.dtype_for_vocab(spec.max_id + 1, dtype)
    except S.ShardError as e:
        raise PretokenizeError(str(e)) from e
    if dtype != "uint16":
        fits = spec.max_id <= np.iinfo(np.uint16).max
        log(f"note: writing {dtype} shards ({np_dtype.itemsize} bytes per token)"
            + (" as asked; this tokenizer's ids also fit uint16 (2 bytes per token)" if fits
               else f": the tokenizer's ids go up to {spec.max_id}, beyond uint16"))

    record = {"dtype": dtype, "tokenizer": spec.info, "inputs": [s.identity for s in sources],
              "text_field": text_field, "shard_tokens": int(shard_tokens)}

    # 2. The output directory: new, resumed, already complete, or refused.
    out = Path(output)
    state = prepare_output(out, record, overwrite)
    if state.complete is not None:
        return BuildResult(state.complete, already_complete=True, num_workers=num_workers)
    progress, progress_path = state.progress, out / PROGRESS_NAME
    resumed = len(progress["shards"])
    if resumed:
        log(f"resuming: {resumed} finished shards ({sum(e['num_tokens'] for e in progress['shards']):,} tokens) kept, "
            f"skipping their {progress['consumed_documents']:,} documents")

    # 3. Read -> tokenize in workers -> cut into shards, each shard recorded in the progress file.
    total_bytes = sum(s.size for s in sources)
    from tqdm.auto import tqdm

    bar = tqdm(total=total_bytes or None, unit="B" if total_bytes else "doc", unit_scale=True,
               unit_divisor=1024 if total_bytes else 1000, desc="pretokenize", file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5, disable=not show_progress)
    last_bytes = 0

    def on_read(position: int) -> None:
        nonlocal last_bytes
        if total_bytes:
            bar.update(position - last_bytes)
            last_bytes = position

    reader = DocumentReader(sources, text_field, on_read)
    counts = {"documents_read": 0, "empty": 0}
    session_start, session_tokens = time.perf_counter(), 0
    prior_seconds = float(progress.get("elapsed_seconds", 0.0))

    def on_shard(entry: dict, consumed: int) -> None:
        progress["shards"].append(entry)
        progress["consumed_documents"] = consumed
        progress["documents_without_tokens"] += writer.documents_without_tokens
        writer.documents_without_tokens = 0
        progress["elapsed_seconds"] = prior_seconds + time.perf_counter() - session_start
        S.atomic_write_json(progress_path, progress)

    def batches() -> Iterator[tuple[list[str], np.ndarray]]:
        skip = progress["consumed_documents"]
        texts, index, chars, i = [], [], 0, -1
        for i, text in enumerate(reader):
            if not text or text.isspace():
                counts["empty"] += 1
                continue
            if i < skip:
                continue  # in a finished shard: read (to keep the order), not tokenized
            texts.append(text)
            index.append(i)
            chars += len(text)
            if chars >= batch_chars:
                yield texts, np.asarray(index, dtype=np.int64)
                texts, index, chars = [], [], 0
        counts["documents_read"] = i + 1
        if i + 1 < skip:
            raise PretokenizeError(f"the inputs hold {i + 1} documents, fewer than the {skip} the finished shards "
                                   "consumed: they changed; pass --overwrite to rebuild")
        if texts:
            yield texts, np.asarray(index, dtype=np.int64)

    writer = ShardWriter(out, dtype, int(shard_tokens), resumed, on_shard)
    last_postfix = 0.0
    try:
        for stream_index, ids, lens in encode_stream(batches(), spec, dtype, num_workers):
            writer.add(ids, lens, stream_index)
            session_tokens += int(ids.size)
            if not total_bytes:
                bar.update(int(lens.size))
            now = time.perf_counter()
            if now - last_postfix > 1.0:
                rate = session_tokens / max(now - session_start, 1e-9)
                bar.set_postfix_str(f"{rate / 1e6:.2f}M tok/s, {writer.index} shards", refresh=False)
                last_postfix = now
        writer.finish(consumed=counts["documents_read"])
    except BaseException:
        writer.abandon()
        if state.fresh and not progress["shards"]:
            _remove_trace(out, progress_path, state.created_dir)
        raise
    finally:
        bar.close()
    progress["documents_without_tokens"] += writer.documents_without_tokens
    session_seconds = time.perf_counter() - session_start

    entries = progress["shards"]
    if not entries:
        _remove_trace(out, progress_path, state.created_dir)
        read = counts["documents_read"]
        raise PretokenizeError(
            "no documents to tokenize: the inputs hold no text"
            if read == 0 else
            f"no documents to tokenize: all {read} documents of the inputs are empty, whitespace-only or "
            f"produce no tokens" + ("" if dataset or any(f[1] == "txt" for s in sources for f in s.files)
                                    else f" (is --text-field {text_field!r} the right field?)")
        )

    # 4. The manifest, last; then the progress file goes.
    for p in own_files(out):  # shards past the last one (a run killed between a rename and its progress record)
        m = _SHARD_FILE.match(p.name)
        if m and int(m.group(1)) >= len(entries):
            p.unlink()
    manifest = {
        "format": S.FORMAT_NAME,
        "version": S.FORMAT_VERSION,
        "dtype": dtype,
        "byte_order": "little",
        "tokenizer": spec.info,
        "shards": entries,
        "total_tokens": int(sum(e["num_tokens"] for e in entries)),
        "total_documents": int(sum(e["num_documents"] for e in entries)),
        "inputs": record["inputs"],
        "text_field": text_field,
        "shard_tokens": int(shard_tokens),
        "stats": {
            "documents_read": counts["documents_read"],
            "empty_documents_skipped": counts["empty"],
            "documents_without_tokens_skipped": progress["documents_without_tokens"],
            "replaced_bytes": {label: c.count for label, c in reader.replaced.items()},
            "input_bytes": total_bytes,
            "ignored_files": {s.label: len(s.ignored) for s in sources if s.ignored},
        },
        "command": list(command if command is not None else sys.argv),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_seconds": round(prior_seconds + time.perf_counter() - session_start, 3),
    }
    S.atomic_write_json(out / S.MANIFEST_NAME, manifest)
    progress_path.unlink()
    _fsync_dir(out)
    return BuildResult(manifest, session_tokens=session_tokens, session_seconds=session_seconds, num_workers=num_workers)


def summary(result: BuildResult, output: str) -> str:
    m = result.manifest
    itemsize = np.dtype(m["dtype"]).itemsize
    size = m["total_tokens"] * itemsize
    if result.already_complete:
        return (f"{output} is already complete ({len(m['shards'])} shards, {m['total_documents']:,} documents, "
                f"{m['total_tokens']:,} tokens): nothing to do (pass --overwrite to rebuild)")
    st = m["stats"]
    lines = [
        f"wrote {output}: {m['total_documents']:,} documents, {m['total_tokens']:,} tokens in {len(m['shards'])} "
        f"shards of {m['dtype']} ({size / 2**20:.1f} MiB on disk, {size / max(m['total_tokens'], 1):.2f} bytes/token)",
        f"time {result.session_seconds:.1f} s, {result.session_tokens / max(result.session_seconds, 1e-9):,.0f} tokens/s "
        f"with {result.num_workers} worker{'s' if result.num_workers > 1 else ''}"
        + (f" ({m['elapsed_seconds']:.1f} s over all runs, resumed)" if m["elapsed_seconds"] > result.session_seconds + 1 else ""),
        f"skipped {st['empty_documents_skipped']:,} empty documents and {st['documents_without_tokens_skipped']:,} "
        f"without tokens, of {st['documents_read']:,} read",
    ]
    replaced = {k: v for k, v in st["replaced_bytes"].items() if v}
    lines.append("replaced undecodable bytes with U+FFFD: " + ", ".join(f"{k}: {v:,}" for k, v in replaced.items())
                 if replaced else "replaced undecodable bytes: none")
    for label, n in st.get("ignored_files", {}).items():
        lines.append(f"ignored {n} files of unsupported type in {label}")
    return "\n  ".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pretokenize.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, metavar="NAME_OR_PATH",
                   help="a tokenizer directory with tokenizer.json, or a hub name (the teacher's tokenizer)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="PATH",
                     help=f"files or directories to read, in this order; supported: {SUPPORTED}")
    src.add_argument("--dataset", metavar="NAME",
                     help="a `datasets` hub dataset (or builder directory), streamed: nothing is downloaded whole")
    p.add_argument("--dataset-config", metavar="C", help="the --dataset configuration (for example wikitext-103-raw-v1)")
    p.add_argument("--split", metavar="S", help="the split to read: required with --dataset, and for a saved DatasetDict")
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
                       show_progress=not args.no_progress)
    except PretokenizeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the finished shards are kept; re-run the same command to resume", file=sys.stderr)
        return 130
    print(summary(result, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
