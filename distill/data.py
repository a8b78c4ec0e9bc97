"""Training samples: fixed-length windows over a shard stream, and the sampler that orders them.

A sample is a window of the token stream (see distill/shards.py):

    sample i = [CLS] + stream[i*(L-2) : (i+1)*(L-2)] + [SEP]        L = max_seq_len

so one shard directory serves 128- and 512-token runs. Windows cross document and shard
boundaries (RoBERTa's FULL-SENTENCES); the last, partial window is padded to L.

`WindowSampler` orders the samples of an epoch by a permutation fixed by (seed, epoch),
splits what is left of the epoch between ranks, and resumes mid-epoch from the number of
samples all ranks have consumed together.

Data checks. Opening shards always checks their sizes against the manifest. `verify_shards`
(run by `WindowDataset` unless told otherwise) also reads every shard once, before the first
batch: its sha256, its ids below the vocabulary size and its largest id. By default (`verify=None`)
it does so when the shards total at most VERIFY_BYTES_LIMIT (8 GiB: seconds of reading and hashing,
cheap next to any run that uses them) and says so in one line when they are larger;
`verify=True` (--verify_data) verifies whatever the size, `verify=False` (the opt-out) checks
sizes only. Whatever was verified, a window holding an id outside the vocabulary raises
`ShardError` naming the shard and the id before it reaches a model (an index error in the
embedding otherwise). `check_compatible` checks shards against a model: vocabulary size, special
ids, each shard's recorded largest id against the embedding rows, and against a tokenizer the
manifest's tokenizer signature (vocabulary, normalizer, pre-tokenizer, model settings).
"""
from __future__ import annotations

import math
import operator
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .errors import DataError
from .shards import MANIFEST_NAME, ShardError, ShardSet, tokenizer_signature, tokenizer_vocabulary

# Tokenizers without a length limit report a huge sentinel (transformers: int(1e30));
# no real encoder has this many positions.
_NO_LIMIT = 10**9

# Manifest key -> the tokenizer / config attribute holding the same id.
_SPECIAL_IDS = ("cls_token_id", "sep_token_id", "pad_token_id", "mask_token_id")

# Shards up to this size are verified (sha256, ids) by default when a dataset is built: at ~1 GB/s
# of sha256, seconds. Larger ones are verified with verify=True (--verify_data).
VERIFY_BYTES_LIMIT = 8 * 2**30

_FIX = "re-run tools/pretokenize.py with the model's tokenizer (--tokenizer <the teacher's directory or name>)"


def _say(line: str, stream=None) -> None:
    """Print a note or warning once per job (rank 0), not once per rank."""
    if _default_world()[1] == 0:
        print(line, file=stream or sys.stdout, flush=True)


def max_length_limit(tokenizer_info: Mapping[str, Any]) -> int | None:
    """The tokenizer's `model_max_length` from a manifest, or None where it sets no real limit."""
    value = tokenizer_info.get("model_max_length")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value <= 0 or value >= _NO_LIMIT:
        return None
    return int(value)


def num_windows(num_tokens: int, max_seq_len: int) -> int:
    """Samples of length `max_seq_len` that `num_tokens` stream tokens make (the last one partial)."""
    return -(-int(num_tokens) // (int(max_seq_len) - 2))


class WindowDataset(Dataset):
    """Windows of `max_seq_len` tokens over a shard directory, read from its memory maps.

    Sample i is `[CLS] + stream[i*(L-2) : (i+1)*(L-2)] + [SEP]` with L = `max_seq_len`; the
    last window may be shorter and is then padded with the pad id up to L, its SEP right after
    its last stream token. `len(dataset) == ceil(num_tokens / (L - 2))`.

    Each item is `{"input_ids": LongTensor[L], "attention_mask": LongTensor[L]}` (mask 1 on
    CLS, stream tokens and SEP, 0 on padding), so torch's default collate stacks them into
    [B, L] batches.

    Args:
        shards: a shard directory (tools/pretokenize.py) or an open `ShardSet`.
        max_seq_len: L, at least 3 and at most the tokenizer's `model_max_length` in the manifest.
        verify: read every shard once on open (sha256, ids; sizes are always checked), as
            `verify_shards`: None (the default) when the shards total at most VERIFY_BYTES_LIMIT,
            True whatever their size, False not (sizes only).

    Attributes:
        shards: the `ShardSet` read from. Only memory maps are held, opened lazily in each
            process, so the dataset pickles small and works in DataLoader worker processes.
        max_seq_len: L.
        tokenizer_info: the manifest's tokenizer entry (name_or_path, vocab_size, special ids,
            model_max_length, ...); pass it to `check_compatible` with the model's config.
    """

    def __init__(self, shards: str | os.PathLike | ShardSet, max_seq_len: int, *, verify: bool | None = None):
        if not isinstance(shards, ShardSet):
            shards = ShardSet(shards)  # sizes: the cheap checks first, the data last
        self.shards = shards
        self.tokenizer_info: dict = shards.tokenizer
        self.max_seq_len = _check_seq_len(max_seq_len, self.tokenizer_info, shards.directory)
        if shards.num_tokens == 0:
            raise DataError(
                f"shard directory {str(shards.directory)!r} holds no tokens: its inputs had no text; "
                "re-run tools/pretokenize.py on a non-empty corpus"
            )
        self.cls_id = int(self.tokenizer_info["cls_token_id"])
        self.sep_id = int(self.tokenizer_info["sep_token_id"])
        if self.tokenizer_info["pad_token_id"] is None:
            raise DataError(
                f"shard directory {str(shards.directory)!r} was built with a tokenizer that has no PAD token, which "
                "training windows need for their last, partial window: give the tokenizer a pad token (e.g. "
                "tokenizer.pad_token = tokenizer.sep_token, then save_pretrained) and rebuild the shards")
        self.pad_id = int(self.tokenizer_info["pad_token_id"])
        self.vocab_size = int(self.tokenizer_info["vocab_size"])
        self.stride = self.max_seq_len - 2  # stream tokens per full window
        self._len = num_windows(shards.num_tokens, self.max_seq_len)
        verify_shards(shards, verify)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = operator.index(index)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"window {index} out of range for {self._len} windows")
        body = self.shards.read(i * self.stride, (i + 1) * self.stride)  # (n,) n <= L-2, a view of the memmap
        n = body.shape[0]
        if n and int(body.max()) >= self.vocab_size:  # a few µs; else an index error deep in the embedding
            j = int(np.flatnonzero(body >= self.vocab_size)[0])
            shard, offset = self.shards.locate(i * self.stride + j)
            raise self.shards.id_error(self.shards.directory / self.shards.shards[shard]["file"], offset, int(body[j]))
        input_ids = torch.full((self.max_seq_len,), self.pad_id, dtype=torch.long)
        input_ids[0] = self.cls_id
        input_ids[1:n + 1] = torch.from_numpy(body.astype(np.int64))  # copies only this window
        input_ids[n + 1] = self.sep_id
        attention_mask = torch.zeros(self.max_seq_len, dtype=torch.long)
        attention_mask[:n + 2] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def __repr__(self) -> str:
        return (f"WindowDataset({str(self.shards.directory)!r}, max_seq_len={self.max_seq_len}: "
                f"{self._len} windows over {self.shards.num_tokens} tokens)")


def verify_shards(shards: ShardSet, verify: bool | None = None) -> bool:
    """Read every shard once (sha256, ids, largest id; ShardSet.check) as `verify` says; whether it did.

    None: when the shards total at most VERIFY_BYTES_LIMIT, else a one-line note says they were not
    verified; True: whatever their size (--verify_data); False: not (sizes were checked on open).
    A damaged shard raises ShardError naming it, with the fix (re-run tools/pretokenize.py).
    """
    if verify is None:
        verify = shards.num_bytes <= VERIFY_BYTES_LIMIT
        if not verify:
            _say(f"note: the {shards.num_bytes / 2**30:.1f} GiB of shards in {shards.directory} are over the "
                 f"{VERIFY_BYTES_LIMIT / 2**30:.0f} GiB verified by default: their checksums are not verified "
                 "(pass --verify_data to verify them before training)")
    if verify:
        shards.check(verify=True)
    return bool(verify)


def _check_seq_len(max_seq_len: Any, tokenizer_info: Mapping[str, Any], directory) -> int:
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, (int, np.integer)):
        raise DataError(f"max_seq_len must be an integer, got {max_seq_len!r}")
    max_seq_len = int(max_seq_len)
    if max_seq_len < 3:
        raise DataError(
            f"max_seq_len {max_seq_len} is too small: a window holds [CLS], at least one token and [SEP]; "
            "use --max_seq_length 3 or more (128 or 512 are usual)"
        )
    limit = max_length_limit(tokenizer_info)
    if limit is not None and max_seq_len > limit:
        raise DataError(
            f"max_seq_len {max_seq_len} exceeds the tokenizer's maximum {limit} (model_max_length in "
            f"{os.path.join(str(directory), MANIFEST_NAME)}); use --max_seq_length {limit} or less"
        )
    return max_seq_len


# --------------------------------------------------------------------------- compatibility
def check_compatible(shards: Any, tokenizer_or_model_config: Any, *, allow_mismatch: bool = False) -> None:
    """Raise `DataError` unless these shards fit this model.

    `shards` is the manifest's tokenizer entry (`WindowDataset.tokenizer_info`), or a `ShardSet`, a
    `WindowDataset` or a whole manifest, whose shards' recorded largest ids are then checked too.
    `tokenizer_or_model_config` is a Hugging Face tokenizer, a model config (or a model, whose
    `.config` is used), or a mapping with the manifest's keys. Compared: the vocabulary size
    and the cls/sep/pad/mask ids, each where the other side defines it (a BERT config knows
    its vocabulary size and pad id only). A tokenizer matches on vocabulary size if either its
    base vocabulary (`vocab_size`) or its full length with added tokens (`len`) matches; a model
    config (or mapping) fits when its embedding table has at least the shards' vocabulary size
    (tables padded past the tokenizer, as DeBERTa-v3's 128,100 rows for 128,001 tokens, fit), and
    every shard's largest id has a row. The message names every difference.

    Against a tokenizer, the manifest's tokenizer signature (distill.shards.tokenizer_signature) is
    compared too: a vocabulary of the same size with other tokens, another lower-casing or
    normalizer, pre-tokenizer or model settings is named (the differing ids listed when the shards'
    tokenizer is still at its recorded path, unchanged) and refused, or with `allow_mismatch`
    (--allow_tokenizer_mismatch) printed as a warning. A manifest written before signatures were
    recorded gets a one-line note that the tokenizer could not be verified.
    """
    info, entries = _shards_side(shards)
    other = tokenizer_or_model_config
    if not isinstance(other, Mapping) and not hasattr(other, "vocab_size") and hasattr(other, "config"):
        other = other.config  # a model
    is_tokenizer = not isinstance(other, Mapping) and hasattr(other, "convert_tokens_to_ids")
    diffs = _size_and_id_differences(info, entries, other, is_tokenizer)
    built_with = info.get("name_or_path", "an unnamed tokenizer")
    if diffs:
        kind = "tokenizer" if is_tokenizer else "config"
        raise DataError(
            f"the shards were built with tokenizer {built_with!r}, which does not match the model's {kind}:\n  - "
            + "\n  - ".join(diffs) + f"\n{_FIX}"
        )
    if is_tokenizer:
        _check_signature(info, other, allow_mismatch)


def _shards_side(shards: Any) -> tuple[Mapping[str, Any], list[dict]]:
    """(the manifest's tokenizer entry, its shard entries: [] when given the tokenizer entry alone)."""
    if isinstance(shards, WindowDataset):
        shards = shards.shards
    if isinstance(shards, ShardSet):
        return shards.tokenizer, shards.shards
    if isinstance(shards, Mapping) and "tokenizer" in shards and "shards" in shards:  # a manifest
        return shards["tokenizer"], list(shards["shards"])
    return shards, []


def _size_and_id_differences(info: Mapping[str, Any], entries: list[dict], other: Any, is_tokenizer: bool) -> list:
    def get(key: str):
        value = other.get(key) if isinstance(other, Mapping) else getattr(other, key, None)
        return None if value is None else int(value)

    diffs = []
    ours = info.get("vocab_size")
    theirs = {get("vocab_size")} | ({len(other)} if is_tokenizer else set())
    theirs.discard(None)
    # a model's embedding table may be padded past its tokenizer (DeBERTa-v3: 128100 rows for 128001 tokens):
    # a config fits when it has a row for every id of the shards; a tokenizer must match
    fits = (int(ours) in theirs) if is_tokenizer else all(int(ours) <= t for t in theirs)
    if ours is not None and theirs and not fits:
        diffs.append(f"vocab_size: shards {int(ours)}, model {' / '.join(map(str, sorted(theirs)))}")
    for key in _SPECIAL_IDS:
        ours, theirs_id = info.get(key), get(key)
        if ours is not None and theirs_id is not None and int(ours) != theirs_id:
            diffs.append(f"{key}: shards {int(ours)}, model {theirs_id}")
    if theirs:
        rows = max(theirs) if is_tokenizer else min(theirs)
        beyond = [e for e in entries if isinstance(e.get("max_id"), int) and e["max_id"] >= rows]
        what = f"the model's tokenizer has {rows} ids" if is_tokenizer else f"the model has {rows} embedding rows"
        diffs += [f"{e['file']}: holds token ids up to {e['max_id']} (its recorded largest id), but {what}"
                  for e in beyond[:3]]
        if len(beyond) > 3:
            diffs.append(f"... and {len(beyond) - 3} more shards with ids of {rows} or more")
    return diffs


def _check_signature(info: Mapping[str, Any], tokenizer: Any, allow_mismatch: bool) -> None:
    """The manifest's tokenizer signature against `tokenizer`'s: refuse (or warn about) what differs."""
    ours = info.get("signature")
    if not isinstance(ours, Mapping) or not isinstance(ours.get("sha256"), str):
        _say("note: the shards' manifest records no tokenizer signature (written before distill recorded one): "
             "their tokenizer could not be verified beyond its vocabulary size and special ids")
        return
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not hasattr(backend, "to_str"):
        _say(f"note: the model's tokenizer ({type(tokenizer).__name__}) has no fast (tokenizers) backend to compare "
             "with the shards' tokenizer signature: verified on vocabulary size and special ids only")
        return
    their_json = backend.to_str()
    theirs = tokenizer_signature(their_json)
    if theirs["sha256"] == ours["sha256"]:
        return
    built_with = info.get("name_or_path", "an unnamed tokenizer")
    diffs = signature_differences(ours, theirs, _shards_vocabulary(info), tokenizer_vocabulary(their_json))
    head = (f"the shards were built with tokenizer {built_with!r}, which is not the model's tokenizer "
            "(it tokenizes the same text into other ids):\n  - " + "\n  - ".join(diffs))
    if allow_mismatch:
        _say(f"warning: {head}\n(--allow_tokenizer_mismatch: training on these shards anyway)", sys.stderr)
        return
    raise DataError(f"{head}\n{_FIX}, or pass --allow_tokenizer_mismatch to train on these shards anyway")


def _shards_vocabulary(info: Mapping[str, Any]) -> dict[str, int] | None:
    """The shards' vocabulary, from their tokenizer when it is still at its recorded local path, unchanged."""
    path = Path(str(info.get("name_or_path") or ""))
    if not str(info.get("name_or_path") or "") or not path.is_dir():
        return None
    try:
        from transformers import AutoTokenizer

        serialized = AutoTokenizer.from_pretrained(str(path)).backend_tokenizer.to_str()
    except Exception:  # noqa: BLE001 - unreadable or not fast: the differences are named without the ids
        return None
    if tokenizer_signature(serialized)["sha256"] != info["signature"]["sha256"]:
        return None  # changed since the shards were built
    return tokenizer_vocabulary(serialized)


def signature_differences(ours: Mapping[str, Any], theirs: Mapping[str, Any],
                          our_vocab: dict[str, int] | None = None,
                          their_vocab: dict[str, int] | None = None) -> list[str]:
    """What differs between two tokenizer signatures (shards, model), one line each, in words.

    `our_vocab` / `their_vocab` (token -> id), when both are known, list the differing ids.
    """
    diffs = []
    if ours.get("vocab_sha256") != theirs.get("vocab_sha256"):
        diffs.append(_vocabulary_difference(ours, theirs, our_vocab, their_vocab))
    for key in ("normalizer", "pre_tokenizer", "model"):
        diffs += _settings_differences(key, ours.get(key), theirs.get(key))
    if not diffs and ours.get("model_sha256") != theirs.get("model_sha256"):
        diffs.append("model: the same vocabulary and settings, but other merges or scores")
    if not diffs and ours.get("added_tokens_sha256") != theirs.get("added_tokens_sha256"):
        diffs.append("added tokens: the same tokens, with other flags (single_word, lstrip, rstrip, normalized)")
    if not diffs:
        diffs.append(f"signature: shards {str(ours.get('sha256'))[:12]}, model {str(theirs.get('sha256'))[:12]}")
    return diffs


def _vocabulary_difference(ours: Mapping[str, Any], theirs: Mapping[str, Any], our_vocab: dict[str, int] | None,
                           their_vocab: dict[str, int] | None) -> str:
    if our_vocab is None or their_vocab is None:
        return (f"vocabulary: {ours.get('vocab_size')} tokens in the shards' tokenizer, {theirs.get('vocab_size')} "
                f"in the model's, with other token -> id entries (sha256 {str(ours.get('vocab_sha256'))[:12]} vs "
                f"{str(theirs.get('vocab_sha256'))[:12]}; the shards' tokenizer is no longer at its recorded path, "
                "unchanged, to list them)")
    a = {i: t for t, i in our_vocab.items()}
    b = {i: t for t, i in their_vocab.items()}
    differing = [i for i in sorted(a.keys() | b.keys()) if a.get(i) != b.get(i)]
    examples = "; ".join(f"id {i}: shards {_token(a.get(i))}, model {_token(b.get(i))}" for i in differing[:3])
    return (f"vocabulary: {len(differing)} of {len(a.keys() | b.keys())} ids map to other tokens "
            f"(e.g. {examples}{'; ...' if len(differing) > 3 else ''})")


def _token(token: str | None) -> str:
    return "(none)" if token is None else repr(token)


_ABSENT = object()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested JSON settings as {"normalizers.0.lowercase": True, ...}."""
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {prefix: value} if prefix else {}
    flat: dict[str, Any] = {}
    for key, sub in items:
        flat.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _settings_differences(name: str, ours: Any, theirs: Any) -> list[str]:
    """`name.key: shards X, model Y` for each differing setting (the type alone when the types differ)."""
    if ours == theirs:
        return []
    type_a = ours.get("type") if isinstance(ours, Mapping) else None
    type_b = theirs.get("type") if isinstance(theirs, Mapping) else None
    if type_a != type_b:
        return [f"{name}: shards {type_a or 'none'}, model {type_b or 'none'}"]
    a, b = _flatten(ours), _flatten(theirs)
    keys = [k for k in sorted(a.keys() | b.keys()) if a.get(k, _ABSENT) != b.get(k, _ABSENT)]
    show = [f"{name}.{k}: shards {_setting(a.get(k, _ABSENT))}, model {_setting(b.get(k, _ABSENT))}" for k in keys[:5]]
    return show + ([f"{name}: ... and {len(keys) - 5} more settings"] if len(keys) > 5 else [])


def _setting(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value) if isinstance(value, str) else str(value)


# --------------------------------------------------------------------------- order and rank split
def _default_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _epoch_seed(seed: int, epoch: int) -> int:
    # A 64-bit mix of both, so (seed, epoch) pairs never alias as seed + epoch would.
    return int(np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1, np.uint64)[0])


class WindowSampler(Sampler[int]):
    """This rank's sample indices for one epoch: a seeded permutation, split between ranks, resumable.

    The epoch's order is `torch.randperm(num_samples)` drawn from a private `torch.Generator`
    seeded from (seed, epoch), so it does not depend on, nor change, the global RNG; without
    `shuffle` it is 0, 1, 2, ... The first `start_sample` entries of that order, consumed
    before a resume by all ranks together, are skipped; of the rest, `remaining`, rank r takes
    `remaining[r::num_replicas]`.

    The strided split is chosen for resume: when training consumes global batches of
    `num_replicas * micro_batch` (every rank one micro-batch of `micro_batch` per step), the
    first k global batches are exactly `remaining[:k * num_replicas * micro_batch]`, whatever
    the rank. A sampler rebuilt with `start_sample` advanced by that count and the same
    world size hands every rank exactly what it would have had next.

    Args:
        num_samples: samples in the dataset (`len(dataset)`).
        num_replicas, rank: the data-parallel world size and this rank; from `torch.distributed`
            when it is initialised, else 1 and 0.
        seed: seeds the permutation (with the epoch).
        shuffle: permute; False keeps stream order (evaluation, debugging).
        drop_last: drop the last `len(remaining) % num_replicas` samples so every rank gets the
            same count (needed for lockstep data-parallel steps); else the first ranks get one more
            and the union over ranks is exactly the rest of the epoch.
        start_sample: samples of this epoch already consumed by all ranks together (`set_start`).

    `len(sampler)` is this rank's count. The start applies to whichever epoch is set: it is
    not reset by `set_epoch`, so a sampler reused for the next epoch needs `set_start(0)`.
    Orders are reproducible for a given torch version; a resume must use the same one.
    """

    def __init__(self, num_samples: int, *, num_replicas: int | None = None, rank: int | None = None,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = False, start_sample: int = 0):
        if num_replicas is None or rank is None:
            world, this_rank = _default_world()
            num_replicas = world if num_replicas is None else num_replicas
            rank = this_rank if rank is None else rank
        self.num_samples = _check_int("num_samples", num_samples, low=0)
        self.num_replicas = _check_int("num_replicas", num_replicas, low=1)
        self.rank = _check_int("rank", rank, low=0)
        if self.rank >= self.num_replicas:
            raise DataError(f"rank {self.rank} is out of range for {self.num_replicas} replicas "
                            f"(ranks are 0..{self.num_replicas - 1})")
        self.seed = _check_int("seed", seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.set_start(start_sample)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order is drawn (the permutation is a function of (seed, epoch))."""
        self.epoch = _check_int("epoch", epoch, low=0)

    def set_start(self, consumed: int) -> None:
        """Skip the first `consumed` samples of the epoch's order: those all ranks consumed together."""
        consumed = _check_int("start_sample", consumed, low=0)
        if consumed > self.num_samples:
            raise DataError(
                f"start_sample {consumed} exceeds the {self.num_samples} samples of an epoch: it counts the samples "
                "of the current epoch only (the checkpoint's epoch_offset), or the data changed since the checkpoint"
            )
        self.start_sample = consumed

    def __len__(self) -> int:
        remaining = self.num_samples - self.start_sample
        if self.drop_last:
            return remaining // self.num_replicas
        return len(range(self.rank, remaining, self.num_replicas))

    def order(self) -> torch.Tensor:
        """The whole epoch's order, (num_samples,), before the start and the rank split."""
        dtype = torch.int32 if self.num_samples < 2**31 else torch.int64  # half the memory for big corpora
        if not self.shuffle:
            return torch.arange(self.num_samples, dtype=dtype)
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        return torch.randperm(self.num_samples, generator=g, dtype=dtype)

    def __iter__(self) -> Iterator[int]:
        mine = self.order()[self.start_sample + self.rank::self.num_replicas][:len(self)]
        for chunk in mine.split(1 << 16):  # Python ints for 64k samples at a time, not the whole epoch
            yield from chunk.tolist()


def _check_int(name: str, value: Any, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise DataError(f"{name} must be at least {low}, got {value}")
    return int(value)


__all__ = ["DataError", "VERIFY_BYTES_LIMIT", "WindowDataset", "WindowSampler", "check_compatible",
           "num_windows", "max_length_limit", "signature_differences", "verify_shards", "ShardError"]
