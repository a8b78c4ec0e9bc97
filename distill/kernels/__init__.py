"""Fused GPU kernels. Triton is optional: importing this package never imports it.

    from distill.kernels import available, relation_loss_triton
    if available(device):
        total, parts = relation_loss_triton(teacher_qkv, student_qkv, attention_mask,
                                            num_relation_heads=48, relations=relations)

`relation_loss_triton` has the signature and semantics of `distill.relations.relation_loss`
(same validation, same value and gradient within float32 rounding; `relation_loss` itself calls
it for a RelationSpec whose impl is "triton") but computes each relation
with the fused kernels of `distill.kernels.relation_kl`, which never hold an S x S matrix:
memory beyond the inputs is O(B * A_r * S) for the forward and the students' float32 gradients.

On a GPU, Triton compiles a small C launcher at the kernels' first launch: that needs a C compiler
and Python's headers on the host (`host_toolchain_problem`), which `unavailable_reason` checks too.

Before a run uses the kernels, `distill.kernel_check.settle_relation_spec` checks them against the chunked loss on the
training device (`distill.kernel_check.self_check`: tolerances there) and falls back to the
chunked loss (relation_impl "auto") or refuses (relation_impl "triton") when they fail.
"""
from __future__ import annotations

import contextlib
from typing import Mapping, Sequence

import torch

from ..errors import ConfigError
from ..relation_inputs import check_relation_inputs, padding_key_bias, row_weights
from ..relation_spec import RelationSpec, relation_name
from .support import DOT_PRECISIONS, available, host_toolchain_problem, interpreting, unavailable_reason  # noqa: F401

__all__ = ["available", "unavailable_reason", "host_toolchain_problem", "interpreting", "relation_loss_triton",
           "DOT_PRECISIONS"]

def relation_loss_triton(teacher_qkv: Sequence[torch.Tensor], student_qkv: Sequence[torch.Tensor],
                         attention_mask: torch.Tensor, spec: RelationSpec | None = None, *,
                         num_relation_heads: int | None = None,
                         relations: Mapping[tuple[int, int], float] | None = None, chunk_size: int | None = None,
                         precision: str = "ieee", blocks=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`distill.relations.relation_loss` computed by the fused Triton kernels.

    Same arguments and return value; the spec's impl and chunk_size are ignored (the kernels tile
    by themselves). precision: tl.dot's input_precision for float32 operands on the GPU, one of
    DOT_PRECISIONS: "ieee" (default), "tf32x3" or "tf32" (see distill.kernels.relation_kl).
    blocks: None for the defaults, (BLOCK_M, BLOCK_N, num_warps, num_stages) for both kernels, or
    a pair (forward, backward) of such tuples (None for that kernel's default).
    Raises ConfigError when triton cannot run on the tensors' device (see `unavailable_reason`).
    """
    spec = RelationSpec.from_settings(spec, num_relation_heads=num_relation_heads, relations=relations,
                                      chunk_size=chunk_size)
    check_relation_inputs(teacher_qkv, student_qkv, attention_mask, spec)
    if precision not in DOT_PRECISIONS:
        raise ConfigError(f"precision={precision!r}: choose one of {', '.join(DOT_PRECISIONS)}")
    device = student_qkv[0].device
    reason = unavailable_reason(device)
    if reason is not None:
        raise ConfigError(f"relation_loss_triton cannot run: {reason}; use distill.relations.relation_loss "
                           f"(chunk_size=... for the chunked version) instead")
    from distill.kernels.relation_kl import TritonRelationKL, split_blocks

    split_blocks(blocks)                  # validate before any kernel runs

    heads = spec.num_relation_heads
    valid, row_weight = row_weights(attention_mask, device, heads)
    key_bias = padding_key_bias(valid)
    pairs = tuple(spec.relations)
    teacher = tuple(t.detach() for t in teacher_qkv)
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with torch.autocast(device.type, enabled=False), on_device:
        losses = TritonRelationKL.apply(key_bias, row_weight, valid, heads, pairs, precision, blocks,
                                        *teacher, *student_qkv)
    total = torch.zeros((), dtype=torch.float32, device=device)
    parts: dict[str, torch.Tensor] = {}
    for r, (pair, weight) in enumerate(spec.relations.items()):
        parts[relation_name(pair)] = losses[r].detach()
        total = total + weight * losses[r]
    return total, parts


