"""The inputs of a relation loss, shared by the chunked loss (distill.relations) and the fused kernels
(distill.kernels): the Q/K/V tensors and mask checked against each other and the spec, each query row's
weight in the loss, and the bias that masks padded keys."""
from __future__ import annotations

from typing import Sequence

import torch

from .errors import ConfigError
from .relation_spec import _NAMES, RelationSpec, relation_name

__all__ = ["check_relation_inputs", "padding_key_bias", "row_weights"]

# Padded keys get -1e30 rather than -inf: their softmax weight underflows to 0 all the same, so a row
# with a real key gets exactly the -inf softmax, while a row with no real key (an all-padding
# example) stays finite and masking it out afterwards cannot leave a NaN, in value or gradient.
_MASKED = -1e30


def padding_key_bias(valid: torch.Tensor) -> torch.Tensor:
    """(B, S) float32 added to every logit of a key: 0 at real tokens, -1e30 at padding (`valid` is (B, S) bool)."""
    return torch.zeros(valid.shape, dtype=torch.float32, device=valid.device).masked_fill_(~valid, _MASKED)


def row_weights(attention_mask: torch.Tensor, device: torch.device, num_heads: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid (B, S) bool, row_weight (B, S) float32): each query row's weight in the loss.

    row_weight = valid / (B * A_r * n_b) folds the per-example mean over n_b real rows, the mean
    over heads and the batch mean into one factor; 0 at padded rows.
    """
    valid = attention_mask.to(device=device, dtype=torch.bool)
    lengths = valid.sum(dim=1, dtype=torch.float32)                                   # (B,)
    row_weight = valid / (valid.shape[0] * num_heads * lengths.clamp(min=1)).unsqueeze(1)
    return valid, row_weight.contiguous()


def check_relation_inputs(teacher_qkv, student_qkv, attention_mask, spec: RelationSpec) -> None:
    """Check the tensors of one `relation_loss` call against each other and against `spec`."""
    _check_qkv_tensors(teacher_qkv, student_qkv, attention_mask)
    used = sorted({i for pair in spec.relations for i in pair})
    spec.check_widths({f"the {side} {('query', 'key', 'value')[i - 1]} width": qkv[i - 1].shape[2]
                       for side, qkv in (("teacher", teacher_qkv), ("student", student_qkv)) for i in used})
    for side, qkv in (("teacher", teacher_qkv), ("student", student_qkv)):
        for m, n in spec.relations:
            if qkv[m - 1].shape[2] != qkv[n - 1].shape[2]:
                raise ConfigError(f"relation {relation_name((m, n))}: the {side} {_NAMES[m]} width "
                                  f"({qkv[m - 1].shape[2]}) differs from its {_NAMES[n]} width "
                                  f"({qkv[n - 1].shape[2]}); a relation needs both projections of one model to have "
                                  "the same width")


def _check_qkv_tensors(teacher_qkv, student_qkv, attention_mask) -> None:
    """Three float [B, S, H] tensors a side, on one device, of the mask's [B, S]."""
    for side, qkv in (("teacher_qkv", teacher_qkv), ("student_qkv", student_qkv)):
        if not isinstance(qkv, Sequence) or len(qkv) != 3 or not all(torch.is_tensor(x) for x in qkv):
            raise ConfigError(f"{side} must be a (query, key, value) tuple of three [B, S, H] tensors")
        for name, x in zip(("query", "key", "value"), qkv, strict=True):
            if x.dim() != 3 or not x.is_floating_point():
                raise ConfigError(f"{side} {name} has shape {tuple(x.shape)} and dtype {x.dtype}: "
                                  f"expected a floating-point [B, S, H] tensor")
    if not torch.is_tensor(attention_mask) or attention_mask.dim() != 2:
        shape = tuple(attention_mask.shape) if torch.is_tensor(attention_mask) else type(attention_mask).__name__
        raise ConfigError(f"attention_mask must be a [B, S] tensor of 0/1, got {shape}")
    expected = tuple(attention_mask.shape)
    for side, qkv in (("teacher", teacher_qkv), ("student", student_qkv)):
        for name, x in zip(("query", "key", "value"), qkv, strict=True):
            if x.device != student_qkv[0].device:
                raise ConfigError(f"the {side} {name} is on {x.device} but the student query on "
                                  f"{student_qkv[0].device}: move the teacher and student Q/K/V to one device")
            if tuple(x.shape[:2]) != expected:
                raise ConfigError(f"the {side} {name} is [B, S] = {list(x.shape[:2])} but attention_mask is "
                                  f"{list(expected)}: pass the teacher and student Q/K/V and the mask of the "
                                  f"same batch (same batch size and sequence length)")
