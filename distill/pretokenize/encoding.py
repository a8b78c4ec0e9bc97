"""The tokenizer (checked, described for the manifest, serialized for the workers) and the
encoding of text batches, in this process or in a pool of spawned worker processes."""
from __future__ import annotations

# Worker processes are spawned and import this package: its top level imports only the standard
# library and numpy, so that each worker stays small (no torch, transformers, pyarrow or datasets);
# everything else is imported where it is used.
import contextlib
import ctypes
import hashlib
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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..shards import tokenizer_signature
from .errors import PretokenizeError

IN_FLIGHT_PER_WORKER = 4  # tasks queued per worker: slack while the main process closes a shard (fsync)
_SURROGATE = re.compile("[\ud800-\udfff]")


def default_num_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


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
        "fingerprint": hashlib.sha256(serialized.encode("utf-8")).hexdigest(),  # a resume's identity
        "signature": tokenizer_signature(serialized),  # what distill.data.check_compatible compares
    }
    return TokenizerSpec(info, serialized, max_id)


def load_tokenizer(name_or_path: str) -> TokenizerSpec:
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as e:
        raise PretokenizeError("pretokenize needs `transformers` and `tokenizers`: pip install transformers") from e
    hf_logging.set_verbosity_error()
    looks_local = os.path.isabs(name_or_path) or name_or_path.startswith((".", "~"))
    if looks_local and not Path(name_or_path).expanduser().exists():
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
    if hasattr(signal, "pthread_sigmask"):  # blocked while this process started (_sigint_blocked_for_children)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if sys.platform.startswith("linux"):  # die with the main process, at once (PR_SET_PDEATHSIG = 1)
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    # elsewhere, or if the main process died already
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    _WORKER_ENCODER = BatchEncoder(tokenizer_json, sep_id, dtype)


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return _WORKER_ENCODER(texts)


@contextlib.contextmanager
def _sigint_blocked_for_children():
    """Processes started inside begin with SIGINT blocked (the signal mask survives fork and exec) until
    _init_worker ignores it, as multiprocessing's resource tracker does: a Ctrl-C reaches the whole process
    group, and must stop the main process only (which stops the pool), not print a KeyboardInterrupt
    traceback from each worker still importing. The main process gets a Ctrl-C of those milliseconds
    when it unblocks SIGINT, as a KeyboardInterrupt: nothing is lost."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


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
    with _sigint_blocked_for_children():
        pool = context.Pool(num_workers, initializer=_init_worker, initargs=(*args, os.getpid()))
    with pool:
        window: deque = deque()
        for texts, meta in batches:
            window.append((meta, pool.apply_async(_encode_in_worker, (texts,))))
            if len(window) >= IN_FLIGHT_PER_WORKER * num_workers:
                meta, result = window.popleft()
                yield (meta, *result.get())
        while window:
            meta, result = window.popleft()
            yield (meta, *result.get())

