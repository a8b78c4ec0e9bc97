"""The relation settings, without torch: which Q/K/V relations, their weights, the relation heads,
the implementation and its chunk size (`RelationSpec`), and the command line's text form of the
relations ("qq:1,kk:1,vv:1"). `distill.relations` computes the loss they describe; the config and
the command line use this module alone, so parsing flags imports no heavy library.
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Mapping

from .errors import ConfigError, ConfigTypeError

__all__ = ["RelationSpec", "RELATION_IMPLS", "UNCHUNKED_BUDGET_BYTES", "parse_relations", "checked_relations",
           "relation_name", "divisors"]

RELATION_IMPLS = ("auto", "chunked", "reference", "triton")
# What an unchunked relation loss (the reference, or chunked with no chunk size) may hold for one micro-batch.
# It keeps (2 R + 3) float32 [B, A_r, S, S] matrices at its peak for R relations (measured on CPU by
# tools/bench/long_context_bench.py: 5.0 for qq alone, 9.0 for qq,kk,vv); the chunked loss and the fused
# kernel hold O(chunk x S) and O(S), linear in S.
UNCHUNKED_BUDGET_BYTES = 16 * 2**30
_LETTERS = {"q": 1, "k": 2, "v": 3}
_NAMES = {index: letter for letter, index in _LETTERS.items()}
_FORMS = ("accepted forms: NAME:WEIGHT items separated by commas, NAME being two of q, k, v "
          "(qq, kk, vv, qk, ...) or two indices 1-3 joined by '-' (1-1 = qq, 1-2 = qk; 1 = query, "
          "2 = key, 3 = value); the weight defaults to 1; e.g. 'qq:1,kk:1,vv:1' or '1-2:0.5'")


def divisors(n: int, limit: int | None = None) -> list[int]:
    """The divisors of n, ascending, up to `limit` (default n): the valid choices for a head count."""
    return [d for d in range(1, min(n, limit or n) + 1) if n % d == 0]


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class RelationSpec:
    """What the relation loss computes and how; every field is checked here, once.

    num_relation_heads: A_r, a positive integer; whether it divides the model widths is checked
        against the widths (`check_widths`) once they are known.
    relations: {(m, n): weight}, m, n in 1..3 (1 = query, 2 = key, 3 = value), or the same as text,
        "qq:1,kk:1,vv:1" (see `parse_relations`). Stored read-only, as a mapping, in the given order
        (the order of `parts`).
    impl: "auto" (the fused Triton kernels on CUDA when triton is installed, else chunked),
        "chunked" (chunk_size rows at a time; None: one piece), "reference" (one piece, S x S
        matrices under autograd) or "triton" (distill.kernels; refused where it cannot run).
    chunk_size: query rows per chunk of the chunked loss, or None for one piece.
    """

    num_relation_heads: int
    relations: Mapping[tuple[int, int], float] | str
    impl: str = "chunked"
    chunk_size: int | None = None

    def __post_init__(self):
        if not _positive_int(self.num_relation_heads):
            raise ConfigError(f"num_relation_heads={self.num_relation_heads!r} must be a positive integer")
        object.__setattr__(self, "relations", types.MappingProxyType(checked_relations(self.relations)))
        if self.impl not in RELATION_IMPLS:
            raise ConfigError(f"relation_impl={self.impl!r}: choose one of {', '.join(RELATION_IMPLS)}")
        if self.chunk_size is not None and not _positive_int(self.chunk_size):
            raise ConfigError(f"chunk_size={self.chunk_size!r} must be a positive number of query rows "
                              f"(e.g. 64 or 128), or None for the unchunked reference")

    @classmethod
    def from_settings(cls, spec: RelationSpec | None = None, *, num_relation_heads: int | None = None,
                      relations: Mapping[tuple[int, int], float] | str | None = None, impl: str | None = None,
                      chunk_size: int | None = None) -> RelationSpec:
        """`spec` itself, or one built from the separate settings (an API that takes either)."""
        if spec is None:
            if num_relation_heads is None or relations is None:
                raise ConfigTypeError("give a RelationSpec, or num_relation_heads= and relations=")
            return cls(num_relation_heads, relations, impl or "chunked", chunk_size)
        if not isinstance(spec, RelationSpec):
            raise ConfigTypeError(f"spec must be a RelationSpec, not {type(spec).__name__}")
        if any(v is not None for v in (num_relation_heads, relations, impl, chunk_size)):
            raise ConfigTypeError("give either a RelationSpec or the separate settings (num_relation_heads=, "
                                  "relations=, relation_impl=, chunk_size=), not both")
        return spec

    @property
    def names(self) -> list[str]:
        """The relations' names in order, e.g. ["qq", "kk", "vv"]."""
        return [relation_name(pair) for pair in self.relations]

    def check_widths(self, widths: Mapping[str, int]) -> None:
        """Raise ConfigError unless A_r divides every width; `widths` maps a label for messages to a width."""
        for label, width in widths.items():
            if width % self.num_relation_heads:
                listed = ", ".join(map(str, sorted(set(widths.values()))))
                valid = ", ".join(map(str, divisors(math.gcd(*widths.values()))))
                raise ConfigError(f"num_relation_heads={self.num_relation_heads} does not divide {label} ({width}): "
                                  f"choose a divisor of every width ({listed}), i.e. one of {valid}")

    def unchunked_bytes(self, batch: int, seq_len: int) -> int | None:
        """Peak bytes of the loss for a [batch, seq_len] micro-batch where it materialises S x S matrices
        (impl "reference", or "chunked" or "auto" without a chunk size: "auto" is the chunked loss off CUDA, or
        where the fused kernel cannot run): (2 R + 3) float32 [B, A_r, S, S] matrices for R relations; None for
        the implementations whose memory is linear in S."""
        if not (self.impl == "reference" or (self.impl in ("chunked", "auto") and self.chunk_size is None)):
            return None
        return (2 * len(self.relations) + 3) * batch * self.num_relation_heads * seq_len * seq_len * 4

    def check_memory(self, batch: int, seq_len: int, budget: int = UNCHUNKED_BUDGET_BYTES) -> None:
        """ConfigError where an unchunked loss would hold more than `budget` bytes for one micro-batch."""
        need = self.unchunked_bytes(batch, seq_len)
        if need is not None and need > budget:
            what = "relation_impl=reference" if self.impl == "reference" else "an unchunked relation loss"
            fit = max(1, math.isqrt(budget // ((2 * len(self.relations) + 3) * batch * self.num_relation_heads * 4)))
            raise ConfigError(f"{what} at seq_len {seq_len} would hold {need / 2**30:.1f} GiB of [B, A_r, S, S] "
                              f"matrices per micro-batch of {batch}, over its budget of {budget / 2**30:.0f} GiB: use "
                              f"relation_impl chunked with a chunk size (the same loss, memory linear in S), or "
                              f"seq_len <= {fit} at this batch size")


def checked_relations(relations) -> dict[tuple[int, int], float]:
    """{(m, n): weight}, checked, from a mapping or from the command line's text ("qq:1,kk:1,vv:1", see
    parse_relations); ConfigError saying what is wrong."""
    if isinstance(relations, str):
        return _positive_weights(parse_relations(relations))
    try:
        relations = dict(relations)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"relations={relations!r} is not {{(m, n): weight}} nor text like 'qq:1,kk:1,vv:1' "
                          f"(1 / q = query, 2 / k = key, 3 / v = value)") from e
    if not relations:
        raise ConfigError("relations is empty: give {(m, n): weight} with at least one pair, m, n in 1..3 "
                          "(1 = query, 2 = key, 3 = value), e.g. {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0} "
                          "(or parse_relations('qq:1,kk:1,vv:1'))")
    for pair in relations:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(_is_index(i) for i in pair)):
            raise ConfigError(f"relation {pair!r} is not a pair (m, n) with m, n in 1..3 "
                              f"(1 = query, 2 = key, 3 = value), e.g. (1, 1) for query-query")
    return _positive_weights(relations)


def _positive_weights(relations: dict) -> dict[tuple[int, int], float]:
    """The relations, each weight a finite number > 0 (a relation of weight 0 costs compute and teaches nothing)."""
    for pair, weight in relations.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"relation {relation_name(pair)}: weight {weight!r} is not a finite number > 0")
    zero = [relation_name(p) for p, w in relations.items() if w == 0]
    if len(zero) == len(relations):
        raise ConfigError(f"every relation ({', '.join(zero)}) has weight 0: nothing would be distilled; give at "
                          "least one weight > 0, e.g. 'qq:1,kk:1,vv:1'")
    if zero:
        rest = ",".join(f"{relation_name(p)}:{w:g}" for p, w in relations.items() if w)
        raise ConfigError(f"relation {', '.join(zero)} has weight 0: it would be computed every step and teach "
                          f"nothing; leave it out ('{rest}')")
    return {pair: float(weight) for pair, weight in relations.items()}


def relation_name(pair: tuple[int, int]) -> str:
    """(1, 1) -> "qq", (1, 2) -> "qk", (3, 3) -> "vv" (1 = query, 2 = key, 3 = value)."""
    if not (isinstance(pair, tuple) and len(pair) == 2 and all(_is_index(i) for i in pair)):
        raise ConfigError(f"relation {pair!r} is not a pair (m, n) with m, n in 1..3 (1 = query, 2 = key, 3 = value)")
    return _NAMES[pair[0]] + _NAMES[pair[1]]


def parse_relations(spec: str) -> dict[tuple[int, int], float]:
    """"qq:1,kk:1,vv:1" -> {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}; "1-2:0.5" -> {(1, 2): 0.5}.

    Letters q = 1 (query), k = 2 (key), v = 3 (value); weights are finite and >= 0, default 1.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"relations {spec!r} is empty: {_FORMS}")
    relations: dict[tuple[int, int], float] = {}
    for item in spec.split(","):
        item = item.strip()
        name, sep, weight_text = item.partition(":")
        name = name.strip().lower()
        pair = _parse_pair(name)
        if pair is None:
            raise ConfigError(f"relation item {item!r}: {name!r} names no relation; {_FORMS}")
        try:
            weight = float(weight_text) if sep else 1.0
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"relation item {item!r}: the weight must be a finite number >= 0; {_FORMS}")
        if pair in relations:
            raise ConfigError(f"relation item {item!r}: {relation_name(pair)} is given twice; list each relation once")
        relations[pair] = weight
    return relations


def _parse_pair(name: str) -> tuple[int, int] | None:
    if len(name) == 2 and all(c in _LETTERS for c in name):
        return _LETTERS[name[0]], _LETTERS[name[1]]
    left, dash, right = name.partition("-")
    if dash and left.strip() in ("1", "2", "3") and right.strip() in ("1", "2", "3"):
        return int(left), int(right)
    return None


def _is_index(i) -> bool:
    return isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= 3
