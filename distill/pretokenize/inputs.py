"""Inputs: --input paths (text, jsonl, parquet, arrow, saved datasets, directories of them) or a
streamed hub dataset, checked before anything is written, then read as documents in a fixed order."""
from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import PretokenizeError

READ_BLOCK = 1 << 22  # bytes read from a text file at a time
# A longer document is cut into documents of at most this many characters (before a space, tab or
# newline where the last such window has one), so that memory stays bounded whatever the document
# sizes: the tokenizer needs ~100 bytes per character of the text it is given at once.
DEFAULT_MAX_DOC_CHARS = 1 << 20
_CUT_BEFORE = (" ", "\n", "\t")
FILE_FORMATS = {  # file name ending -> reader
    ".txt": "txt", ".txt.gz": "txt", ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".parquet": "parquet", ".arrow": "arrow",
}
SUPPORTED = ", ".join(FILE_FORMATS) + ", a datasets save_to_disk directory, or a directory of these"
# A blank-line separator: a newline, then one or more lines holding only whitespace.
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")


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
            raise PretokenizeError(
                f"{directory} has no split {split!r}; its splits are {splits}: pass one with --split"
            )
        directory = directory / split
    state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    files = [directory / entry["filename"] for entry in state.get("_data_files", [])]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise PretokenizeError(
            f"{directory}/state.json lists arrow files that are missing: {missing}; save the dataset again"
        )
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
    _refuse_files_read_twice(sources)
    if all(s.size == 0 for s in sources):
        raise PretokenizeError(f"no text in {describe_sources(sources)}: the files are empty; give a corpus with text")
    return sources


def describe_sources(sources: list[Source]) -> str:
    """The inputs as the user gave them, for a message: 'a.txt, corpus/' (the first 3, then how many more)."""
    labels = [s.label for s in sources]
    return ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")


def _refuse_files_read_twice(sources: list[Source]) -> None:
    """A file reached by two --input arguments (the same path twice, or a file inside a directory also
    given) would be tokenized twice: a duplicated corpus that trains silently. Refused, naming it."""
    first: dict[Path, str] = {}
    for source in sources:
        for path, _ in source.files:
            key = path.resolve()
            if key in first:
                by = (f"--input {first[key]!r} and {source.label!r}" if first[key] != source.label
                      else f"--input {source.label!r} given twice")
                raise PretokenizeError(f"input file {str(path)!r} would be read twice ({by}); give each file once")
            first[key] = source.label


def hub_source(name: str, config: str | None, split: str | None) -> Source:
    """A `datasets` dataset (hub name, or a local builder directory), streamed, never downloaded whole."""
    if not split:
        raise PretokenizeError(f"--dataset {name} needs --split (for example --split train)")
    spec = {"dataset": name, "config": config, "split": split}
    return Source(name, {"format": "hub", **spec}, hub=spec)


def _cut(text: str, start: int, limit: int) -> int:
    """Where the piece of `text` starting at `start` ends: before the last space, tab or newline of the
    next `limit` characters, or after exactly `limit` characters when there is none."""
    end = max(text.rfind(c, start + 1, start + limit + 1) for c in _CUT_BEFORE)
    return end if end > start else start + limit


def split_long(text: str, limit: int) -> Iterator[str]:
    """`text` itself when it has at most `limit` characters, else its pieces (see `_cut`), in order."""
    start = 0
    while len(text) - start > limit:
        end = _cut(text, start, limit)
        yield text[start:end]
        start = end
    yield text[start:] if start else text


def _leading_pieces(carry: str, limit: int) -> tuple[list[str], str]:
    """The pieces of an over-long .txt document that no later text can change, and the carry left.

    `carry` holds no complete separator, except maybe the one that ended the previous document at
    its start; pieces are cut only inside the document's text up to its last non-blank character,
    exactly where `split_long` on the whole document cuts them.
    """
    separator = _BLANK_LINES.match(carry)
    start = separator.end() if separator else 0
    known = len(carry.rstrip())
    pieces = []
    while known - start > limit:
        end = _cut(carry, start, limit)
        pieces.append(carry[start:end])
        start = end
    return pieces, (carry[start:] if pieces else carry)


def _missing_field(where: str, text_field: str, found: Iterable[str]) -> PretokenizeError:
    found = sorted(found)
    hint = next((c for c in ("text", "content", "document", "body", "sentence") if c in found), None)
    suggestion = (f"pass --text-field {hint}" if hint
                  else "pass --text-field with the name of the column that holds the text")
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
        raise PretokenizeError(
            f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); fix or remove the line"
        ) from e
    if not isinstance(row, dict):
        raise PretokenizeError(
            f"{path}:{lineno}: a JSON {type(row).__name__}, not an object with a {text_field!r} field"
        )
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
        f"{where}: column {text_field!r} has type {kind}, not text; "
        "pass --text-field with the column that holds the text"
    )


class DocumentReader:
    """Every document of the inputs, in order, as str; counts bytes read and bytes replaced."""

    def __init__(self, sources: list[Source], text_field: str, on_progress: Callable[[int], None] = lambda n: None,
                 max_doc_chars: int = DEFAULT_MAX_DOC_CHARS):
        self.sources, self.text_field, self.on_progress = sources, text_field, on_progress
        self.max_doc_chars = int(max_doc_chars)  # longer documents are cut (split_long); .txt ones while read
        self.replaced = {s.label: _ReplacementCounter() for s in sources}
        self.bytes_read = 0  # of the inputs (compressed bytes for .gz), for the progress bar

    def _advance(self, done: int, position: int) -> None:
        self.bytes_read = done + position
        self.on_progress(self.bytes_read)

    def __iter__(self) -> Iterator[str]:
        for text in self._documents():
            yield from split_long(text, self.max_doc_chars)

    def _documents(self) -> Iterator[str]:
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
        utf8 = codecs.getincrementaldecoder("utf-8-sig")(counter.errors)
        decoder = io.IncrementalNewlineDecoder(utf8, translate=True)
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
        # A document longer than max_doc_chars is cut while it is read (_leading_pieces), so the carry
        # stays under max_doc_chars + READ_BLOCK characters whatever the document sizes.
        carry = "\n\n"
        for block in self._decoded_blocks(path, counter, at):
            text = carry + block
            cut = text.rfind("\n") + 1
            if cut:
                pieces = _BLANK_LINES.split(text[:cut])
                last = pieces.pop()
                yield from filter(None, pieces)  # empty pieces are the edges of separators, not documents
                text = (last or "\n\n") + text[cut:]
            carry = text
            if len(carry) > self.max_doc_chars:
                pieces, carry = _leading_pieces(carry, self.max_doc_chars)
                yield from pieces
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

