"""The token shard format: its writer and its memory-mapped reader, the one place that knows it.

A shard directory holds

    manifest.json        format, dtype, tokenizer, per-shard sizes, largest id and sha256, totals, provenance
    shard-00000.bin      little-endian token ids, nothing else
    shard-00001.bin      ...

The stream inside the shards is each document's ids (no special tokens), each document
followed by the tokenizer's SEP id. Documents never straddle shards. A shard appears under
its final name only when complete (temporary name, fsync, rename) and the manifest is
written last, so a reader never sees a half-written shard.

Writing: `ShardWriter` cuts a stream of documents into shards (distill.pretokenize feeds it
from worker processes), `build_manifest` and `write_manifest` finish the directory, and
`write_documents` does all three for documents already in memory (tests, small corpora).
Reading: `read_manifest` and `ShardSet` (a directory whose manifest lists no shard is refused).

The manifest's tokenizer entry carries a `signature` (`tokenizer_signature`): sha256s of the
vocabulary (token -> id, sorted by id) and of the model's merges / scores, and the normalizer,
pre-tokenizer and model settings themselves, so that distill.data.check_compatible can name what
differs from a model's tokenizer (lower-casing, N ids mapped to other tokens). Each shard entry
records its largest id (`max_id`), checked against a model's embedding rows without reading the
data. Both keys are optional: manifests written before them (same format version) are still read.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from bisect import bisect_right
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .errors import ShardError
from .io import atomic_write_json, create_temporary, fsync_dir

FORMAT_NAME = "distill-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
SHARD_FILE_PATTERN = r"shard-(\d{5,})\.bin"  # shard_name's files; group 1: the index
SHARD_FILE = re.compile(rf"^{SHARD_FILE_PATTERN}$")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.bin"


def dtype_for_vocab(vocab_size: int, requested: str = "uint16") -> np.dtype:
    """The on-disk dtype for a vocabulary, refusing one whose ids do not fit."""
    if requested not in DTYPES:
        raise ShardError(f"unknown shard dtype {requested!r}; choose one of {sorted(DTYPES)}")
    dtype = DTYPES[requested]
    if vocab_size - 1 > np.iinfo(dtype).max:
        raise ShardError(
            f"the tokenizer has {vocab_size} ids, which do not fit in {requested} "
            f"(max id {np.iinfo(dtype).max}); pass --dtype uint32 to write 4-byte shards"
        )
    return dtype


# --------------------------------------------------------------------------- tokenizer signature
_LONG_SETTING = 256  # longer strings in the settings (a SentencePiece normalizer's charsmap) are kept as their sha256


def _sha256_json(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _settings(obj: Any) -> Any:
    """JSON settings as they are, long strings replaced by "sha256:<hex>" (the manifest stays small)."""
    if isinstance(obj, dict):
        return {k: _settings(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_settings(v) for v in obj]
    if isinstance(obj, str) and len(obj) > _LONG_SETTING:
        return "sha256:" + hashlib.sha256(obj.encode("utf-8", "surrogatepass")).hexdigest()
    return obj


def _as_dict(tokenizer_json: str | dict) -> dict:
    return json.loads(tokenizer_json) if isinstance(tokenizer_json, str) else tokenizer_json


def tokenizer_vocabulary(tokenizer_json: str | dict) -> dict[str, int]:
    """token -> id of a serialized `tokenizers` tokenizer (`backend_tokenizer.to_str()`), added tokens included."""
    t = _as_dict(tokenizer_json)
    vocab = (t.get("model") or {}).get("vocab") or {}
    # WordPiece / BPE / WordLevel: {token: id}; Unigram: [[piece, score], ...] in id order
    mapping = {str(k): int(v) for k, v in vocab.items()} if isinstance(vocab, dict) else {
        str(entry[0]): i for i, entry in enumerate(vocab)}
    for added in t.get("added_tokens") or []:
        mapping[str(added["content"])] = int(added["id"])
    return mapping


def tokenizer_signature(tokenizer_json: str | dict) -> dict:
    """What decides the ids a tokenizer gives a text, as the manifest records it (`tokenizer.signature`).

    `tokenizer_json` is the backend tokenizer serialized (`tokenizer.backend_tokenizer.to_str()`).
    Kept: the vocabulary (token -> id, hashed), the model's learned data (vocabulary with Unigram
    scores, BPE merges in one spelling whatever the `tokenizers` version wrote: hashed), the added
    tokens and their flags (hashed), the normalizer, pre-tokenizer and model settings (as they are).
    Left out: truncation, padding, the post-processor (pretokenize adds no special tokens), the
    decoder and the file's version. `sha256` covers all the rest: the same tokenizer loaded twice gets
    the same signature, and a lower-casing change or one vocabulary entry moved changes it.
    """
    t = _as_dict(tokenizer_json)
    model = t.get("model") or {}
    vocab = tokenizer_vocabulary(t)
    raw_vocab = model.get("vocab") or {}
    merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.get("merges") or []]
    added = sorted((dict(sorted(a.items())) for a in t.get("added_tokens") or []), key=lambda a: int(a["id"]))
    parts = {
        "vocab_size": len(vocab),
        "vocab_sha256": _sha256_json(sorted(([i, tok] for tok, i in vocab.items()), key=lambda p: (p[0], p[1]))),
        "normalizer": _settings(t.get("normalizer")),
        "pre_tokenizer": _settings(t.get("pre_tokenizer")),
        "model": _settings({k: v for k, v in model.items() if k not in ("vocab", "merges")}),
        "model_sha256": _sha256_json({
            "vocab": sorted(raw_vocab.items(), key=lambda kv: (kv[1], kv[0])) if isinstance(raw_vocab, dict)
            else raw_vocab, "merges": merges}),
        "added_tokens_sha256": _sha256_json(added),
    }
    return {"sha256": _sha256_json(parts), **parts}


# --------------------------------------------------------------------------- writer
class ShardWriter:
    """Cuts a token stream into shards at the first document boundary at or past `shard_tokens`.

    The open shard is streamed to a temporary file (so memory does not grow with the shard),
    fsynced and renamed when complete; then `on_shard(entry, consumed)` records its manifest
    entry (file, num_tokens, num_documents, max_id: its largest id, sha256), `consumed` being how
    many documents of the input stream the finished shards cover.
    Shards are numbered from `first_index` (a resumed build continues after its finished shards).
    """

    def __init__(self, directory: str | os.PathLike, dtype: str, shard_tokens: int, first_index: int = 0,
                 on_shard: Callable[[dict, int], None] = lambda entry, consumed: None):
        if dtype not in DTYPES:
            raise ShardError(f"unknown shard dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        self.directory, self.dtype, self.shard_tokens = Path(directory), DTYPES[dtype], int(shard_tokens)
        self.index, self.on_shard = first_index, on_shard
        self.documents_without_tokens = 0  # dropped (length 0) since the last finished shard; the caller resets it
        self._file = None

    def _open(self) -> None:
        self.name = shard_name(self.index)
        fd, self._tmp = create_temporary(self.directory / self.name)
        self._file = os.fdopen(fd, "wb")
        self._sha = hashlib.sha256()
        self.tokens = self.documents = 0
        self.max_id = 0

    def _write(self, ids: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(ids, dtype=self.dtype)).cast("B")  # no copy when already this dtype
        self._sha.update(data)
        self._file.write(data)
        if ids.size:
            self.max_id = max(self.max_id, int(ids.max()))
        self.tokens += ids.size

    def _close(self, consumed: int) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.directory / self.name)
        fsync_dir(self.directory)  # the rename itself is durable before on_shard records the shard
        entry = {"file": self.name, "num_tokens": int(self.tokens), "num_documents": int(self.documents),
                 "max_id": int(self.max_id), "sha256": self._sha.hexdigest()}
        self.index += 1
        self.on_shard(entry, consumed)

    def add(self, ids: np.ndarray, lens: np.ndarray, stream_index: np.ndarray) -> None:
        """Append a batch: `lens[i]` tokens (0: dropped) of the document at stream position `stream_index[i]`.

        `ids` is the batch's documents back to back, each ending with its SEP: (sum(lens),).
        """
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
        """Close the last shard (if it got tokens); `consumed`: documents of the stream read in all."""
        if self._file is not None and self.tokens:
            self._close(consumed)
        else:
            self.abandon()  # opened for documents that all had no tokens: no shard

    def abandon(self) -> None:
        """Drop the open shard's temporary file; the finished shards stay."""
        if self._file is not None:
            self._file.close()
            os.unlink(self._tmp)
            self._file = None


def build_manifest(dtype: str, tokenizer: dict, shards: list[dict], **provenance) -> dict:
    """The manifest of finished shards: the format's fields, then `provenance` (inputs, stats, command ...).

    `tokenizer` holds at least name_or_path, vocab_size and the cls/sep/pad/mask token ids (what
    distill.data checks a model against), and by convention do_lower_case, model_max_length
    (None: unbounded), fingerprint (what a resumed pretokenize must find unchanged) and signature
    (`tokenizer_signature`); `shards` is the ShardWriter entries in order.
    """
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "dtype": dtype,
        "byte_order": "little",
        "tokenizer": tokenizer,
        "shards": list(shards),
        "total_tokens": int(sum(e["num_tokens"] for e in shards)),
        "total_documents": int(sum(e["num_documents"] for e in shards)),
        **provenance,
    }


def write_manifest(directory: str | os.PathLike, manifest: dict) -> None:
    """Write manifest.json atomically: the last file of a build, which makes the directory readable."""
    atomic_write_json(Path(directory) / MANIFEST_NAME, manifest)


def write_documents(directory: str | os.PathLike, documents: Iterable[Sequence[int]], *, tokenizer: dict,
                    dtype: str = "uint16", shard_tokens: int = 1 << 20, **provenance) -> dict:
    """Write documents held in memory (lists of ids, without SEP) as a finished shard directory.

    Shards close as ShardWriter closes them; returns the manifest (build_manifest's fields and
    `provenance`). For tests and small corpora: distill.pretokenize streams large ones.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np_dtype = dtype_for_vocab(int(tokenizer["vocab_size"]), dtype)
    sep = np.asarray([tokenizer["sep_token_id"]], dtype=np_dtype)
    docs = [np.concatenate([np.asarray(doc, dtype=np_dtype), sep]) for doc in documents]
    entries: list[dict] = []
    writer = ShardWriter(directory, dtype, shard_tokens, on_shard=lambda entry, consumed: entries.append(entry))
    try:
        if docs:
            writer.add(np.concatenate(docs), np.asarray([d.size for d in docs], dtype=np.int64), np.arange(len(docs)))
        writer.finish(consumed=len(docs))
    except BaseException:
        writer.abandon()
        raise
    manifest = build_manifest(dtype, tokenizer, entries, **provenance)
    write_manifest(directory, manifest)
    return manifest


# --------------------------------------------------------------------------- reader
def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of a finished shard directory, every key the reader needs checked; ShardError naming the
    directory or the manifest, the key, and the fix."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        what = "a file, not a shard directory" if directory.exists() else "no such directory"
        raise ShardError(f"{directory}: {what}; build one with tools/pretokenize.py --output_dir DIR and give DIR")
    if not path.is_file():
        raise ShardError(
            f"{directory}: no {MANIFEST_NAME}: it is not a finished shard directory "
            "(tools/pretokenize.py writes the manifest last; re-run it with the same arguments to finish)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path} is not valid JSON ({e}); rebuild the shards with tools/pretokenize.py") from e
    problem = _manifest_problem(manifest)
    if problem:
        raise ShardError(f"{path}: {problem}; the manifest is incomplete or was edited: rebuild the shards with "
                         "tools/pretokenize.py")
    if manifest["format"] != FORMAT_NAME:
        raise ShardError(f"{path} is not a {FORMAT_NAME} manifest (format={manifest['format']!r})")
    if manifest["version"] != FORMAT_VERSION:
        raise ShardError(
            f"{path} has format version {manifest['version']!r}; this distill reads version "
            f"{FORMAT_VERSION}: rebuild the shards with this version's tools/pretokenize.py"
        )
    if manifest["dtype"] not in DTYPES:
        raise ShardError(f"{path}: unknown dtype {manifest['dtype']!r} (expected one of {sorted(DTYPES)})")
    return manifest


# What the reader needs of a manifest (build_manifest writes more): top-level keys, the tokenizer's, each shard's.
_MANIFEST_KEYS = ("format", "version", "dtype", "tokenizer", "shards")
_TOKENIZER_COUNTS = {"vocab_size": 1, "cls_token_id": 0, "sep_token_id": 0, "pad_token_id": 0}  # key: minimum
_NULLABLE = {"pad_token_id"}  # a tokenizer without PAD still makes valid shards (training windows refuse them)
_SHARD_COUNTS = ("num_tokens", "num_documents")


def _manifest_problem(manifest: Any) -> str | None:
    """What is missing or malformed in a manifest's keys ("no 'shards[1].num_tokens' key", ...), or None."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    missing = next((k for k in _MANIFEST_KEYS if k not in manifest), None)
    if missing:
        return f"no {missing!r} key"
    tokenizer, shards = manifest["tokenizer"], manifest["shards"]
    if not isinstance(tokenizer, dict):
        return f"'tokenizer' is {tokenizer!r}, not an object"
    for key, low in {"name_or_path": None, **_TOKENIZER_COUNTS}.items():
        if key not in tokenizer:
            return f"no 'tokenizer.{key}' key"
        if key in _NULLABLE and tokenizer[key] is None:
            continue
        if low is not None and not _is_count(tokenizer[key], low):
            return f"'tokenizer.{key}' is {tokenizer[key]!r}, not an integer >= {low}"
    signature = tokenizer.get("signature")  # optional: manifests written before it have none
    if signature is not None and not (isinstance(signature, dict) and isinstance(signature.get("sha256"), str)):
        return f"'tokenizer.signature' is {signature!r}, not an object with a 'sha256'"
    if not isinstance(shards, list):
        return f"'shards' is {shards!r}, not a list"
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict):
            return f"'shards[{i}]' is {entry!r}, not an object"
        missing = next((k for k in ("file", *_SHARD_COUNTS, "sha256") if k not in entry), None)
        if missing:
            return f"no 'shards[{i}].{missing}' key"
        if not (isinstance(entry["file"], str) and SHARD_FILE.match(entry["file"])):
            return f"'shards[{i}].file' is {entry['file']!r}, not a shard file name like {shard_name(0)}"
        bad = next((k for k in (*_SHARD_COUNTS, "max_id") if k in entry and not _is_count(entry[k], 0)), None)
        if bad:  # max_id is optional: manifests written before it have none
            return f"'shards[{i}].{bad}' is {entry[bad]!r}, not an integer >= 0"
    return None


def _is_count(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def first_id_out_of_range(ids: np.ndarray, vocab_size: int) -> int | None:
    """The index of the first id >= vocab_size in `ids`, or None (one vectorised pass)."""
    bad = np.flatnonzero(ids >= vocab_size)
    return int(bad[0]) if bad.size else None


class ShardSet:
    """All shards of a directory as one token stream, memory-mapped on first use.

    Checks every shard's size against the manifest on open (and its sha256 and ids with
    `verify=True`); refuses a manifest that lists no shard. Picklable: memory maps are reopened
    lazily in each process, so it works in DataLoader worker processes.
    """

    def __init__(self, directory: str | os.PathLike, verify: bool = False):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.dtype = DTYPES[self.manifest["dtype"]]
        self.tokenizer: dict = self.manifest["tokenizer"]
        self.shards: list[dict] = self.manifest["shards"]
        if not self.shards:
            raise ShardError(f"{self.directory} holds no shards: its manifest lists none (were its inputs empty?); "
                             "re-run tools/pretokenize.py on a corpus with text")
        sizes = [int(s["num_tokens"]) for s in self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()  # token offset of each shard
        self.num_tokens = int(self.offsets[-1])
        self.num_documents = int(sum(int(s["num_documents"]) for s in self.shards))
        if self.num_tokens != int(self.manifest.get("total_tokens", self.num_tokens)):
            raise ShardError(
                f"{self.directory / MANIFEST_NAME}: total_tokens={self.manifest['total_tokens']} but the shards "
                f"add up to {self.num_tokens}; the manifest was edited or is corrupt: rebuild the shards"
            )
        self.check(verify=verify)
        self._maps: list[np.memmap | None] = [None] * len(self.shards)

    @property
    def num_bytes(self) -> int:
        """The shards' total size on disk."""
        return self.num_tokens * self.dtype.itemsize

    def locate(self, position: int) -> tuple[int, int]:
        """(shard index, token offset in it) of token `position` of the whole stream."""
        i = bisect_right(self.offsets, int(position)) - 1
        return i, int(position) - self.offsets[i]

    def check(self, verify: bool = False, block_tokens: int = 1 << 22) -> None:
        """Sizes always; with `verify` also the sha256, that every id is below the vocabulary size and that
        the largest id is the manifest's `max_id` (where it records one), read in blocks of `block_tokens`
        (memory bounded by the block). Names the shard and what differs, with the fix."""
        for entry in self.shards:
            path = self.directory / entry["file"]
            expected = int(entry["num_tokens"]) * self.dtype.itemsize
            if not path.is_file():
                raise ShardError(
                    f"{path} is listed in the manifest but missing; rebuild the shards with tools/pretokenize.py"
                )
            actual = path.stat().st_size
            if actual != expected:
                raise ShardError(
                    f"{path} has {actual} bytes but the manifest says {entry['num_tokens']} tokens x "
                    f"{self.dtype.itemsize} bytes = {expected}: the shard is truncated or was altered; "
                    "rebuild the shards with tools/pretokenize.py"
                )
            if verify:
                self._verify(path, entry, block_tokens)

    def _verify(self, path: Path, entry: dict, block_tokens: int) -> None:
        sha, bad, max_id = self._scan(path, block_tokens)
        if sha != entry["sha256"]:
            raise ShardError(
                f"{path} has sha256 {sha} but the manifest says {entry['sha256']}: the shard was "
                "altered or corrupted; rebuild the shards with tools/pretokenize.py"
            )
        if bad is not None:
            raise self.id_error(path, *bad, max_id=max_id)
        if "max_id" in entry and entry["max_id"] != max_id:
            raise ShardError(
                f"{path}: its largest token id is {max_id} but the manifest says {entry['max_id']}: the manifest "
                "was edited or is corrupt; rebuild the shards with tools/pretokenize.py"
            )

    def _scan(self, path: Path, block_tokens: int) -> tuple[str, tuple[int, int] | None, int]:
        """Read a shard once, in blocks: its sha256, (offset, id) of its first id outside the vocabulary, and
        its largest id."""
        digest, offset, bad, max_id = hashlib.sha256(), 0, None, 0
        vocab = int(self.tokenizer["vocab_size"])
        with open(path, "rb") as f:
            while chunk := f.read(block_tokens * self.dtype.itemsize):
                digest.update(chunk)
                ids = np.frombuffer(chunk, dtype=self.dtype)
                if bad is None and (i := first_id_out_of_range(ids, vocab)) is not None:
                    bad = (offset + i, int(ids[i]))
                if ids.size:
                    max_id = max(max_id, int(ids.max()))
                offset += ids.size
        return digest.hexdigest(), bad, max_id

    def id_error(self, path: Path, offset: int, token_id: int, max_id: int | None = None) -> ShardError:
        """The error for id `token_id` at token `offset` of shard `path`, outside the manifest's vocabulary
        (`max_id`: the shard's largest id, where known)."""
        largest = "" if max_id is None else f" (the shard's largest id is {max_id})"
        return ShardError(
            f"{path}: token id {token_id} at token offset {offset} (byte {offset * self.dtype.itemsize}) is outside "
            f"the vocabulary of {self.tokenizer['vocab_size']} ids of tokenizer {self.tokenizer['name_or_path']!r}"
            f"{largest}; the shard is corrupt or was built with another tokenizer: rebuild the shards with "
            "tools/pretokenize.py"
        )

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_maps"] = [None] * len(self.shards)  # memmaps are reopened in the receiving process
        return state

    def __len__(self) -> int:
        return self.num_tokens

    def shard(self, index: int) -> np.ndarray:
        """The memory-mapped tokens of shard `index`."""
        m = self._maps[index]
        if m is None:
            entry = self.shards[index]
            if int(entry["num_tokens"]) == 0:
                m = np.zeros(0, dtype=self.dtype)
            else:
                m = np.memmap(self.directory / entry["file"], dtype=self.dtype, mode="r")
            self._maps[index] = m
        return m

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the whole stream, crossing shard boundaries as needed."""
        start, stop = max(0, int(start)), min(self.num_tokens, int(stop))
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)
        i = bisect_right(self.offsets, start) - 1
        parts = []
        while start < stop:
            lo = start - self.offsets[i]
            hi = min(stop, self.offsets[i + 1]) - self.offsets[i]
            parts.append(self.shard(i)[lo:hi])
            start += hi - lo
            i += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def documents(self) -> Iterable[np.ndarray]:
        """Each document's token ids (without its SEP), in stream order."""
        sep = int(self.tokenizer["sep_token_id"])
        for i in range(len(self.shards)):
            arr = np.asarray(self.shard(i))
            ends = np.flatnonzero(arr == sep)
            begin = 0
            for end in ends:
                yield arr[begin:end]
                begin = end + 1
