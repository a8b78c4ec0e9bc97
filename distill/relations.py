"""The MiniLMv2 relation loss: KL between teacher and student self-attention relations.

For each relation (m, n) with weight w (1 = query, 2 = key, 3 = value), teacher and student
separately: split X_m, X_n [B, S, H] into A_r relation heads of d = H / A_r, take
logits = X_m X_n^T / sqrt(d) per head with padded key positions masked out, and compare the
row softmaxes:

    loss_b   = sum over heads and valid query rows of KL(teacher row || student row) / (A_r * n_b)
    relation = mean of loss_b over the B examples        (an example with n_b = 0 adds 0)
    total    = sum over relations of w * relation

This is the normalisation of the published re-implementations (bertdistiller, minilmv2.bb), so
the numbers compare. Softmaxes are taken in float32 whatever the input dtype; gradients reach the
student tensors in their own dtype; the teacher is a constant.

Two implementations of the same value and gradient (equal within float32 rounding):
- `chunk_size=None`: the reference, plain autograd over [B, A_r, S, S] matrices.
- `chunk_size=c`: `_ChunkedRelationKL`, which walks query rows c at a time and holds only
  [B, A_r, c, S] at once; its backward recomputes each chunk and applies the analytic gradient
  of the KL with respect to the student logits, softmax(student) - softmax(teacher).
A third, `impl="triton"`, runs the fused kernels of `distill.kernels`.

The settings (relation heads, relations and weights, implementation, chunk size) are one value,
a `RelationSpec`, checked once when it is built; `DistillConfig.relation_spec` builds it from the
flags and `MiniLMv2Objective` from its keyword arguments.

    spec = RelationSpec(48, parse_relations("qq:1,kk:1,vv:1"), chunk_size=128)
    total, parts = relation_loss((tq, tk, tv), (sq, sk, sv), attention_mask, spec)
    total, parts = relation_loss((tq, tk, tv), (sq, sk, sv), attention_mask,   # the same, spelled out
                                 num_relation_heads=48, relations={(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0},
                                 chunk_size=128)
    parts["qq"]                                          # detached, for logging
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import torch

from .errors import ConfigError
from .relation_inputs import _MASKED, check_relation_inputs, padding_key_bias, row_weights  # noqa: F401
from .relation_spec import (  # noqa: F401 (re-exported: the loss's settings)
    _NAMES,
    RELATION_IMPLS,
    UNCHUNKED_BUDGET_BYTES,
    RelationSpec,
    _is_index,
    checked_relations,
    divisors,
    parse_relations,
    relation_name,
)

__all__ = ["RelationSpec", "RELATION_IMPLS", "parse_relations", "checked_relations", "relation_name", "relation_loss",
           "resolve_relation_impl", "resolve_spec", "divisors"]


# exp() of a float32 below about -87.3 is a denormal or 0, which CPU kernels compute 8-20x slower;
# clamping first changes only values under 1.7e-38, which vanish next to a softmax's largest entry (~1)
_EXP_FLOOR = -87.0


def resolve_spec(spec: RelationSpec, device: torch.device) -> RelationSpec:
    """`spec` with `impl` settled for `device` (never "auto"); "reference" drops the chunk size."""
    impl = resolve_relation_impl(spec.impl, device)
    return dataclasses.replace(spec, impl=impl, chunk_size=None if impl == "reference" else spec.chunk_size)


def resolve_relation_impl(impl: str, device: torch.device) -> str:
    """The relation-loss implementation to use on `device`: auto -> triton on CUDA when it can run, else chunked."""
    from . import kernels

    if impl not in RELATION_IMPLS:
        raise ConfigError(f"relation_impl={impl!r}: choose one of {', '.join(RELATION_IMPLS)}")
    if impl == "auto":
        return "triton" if device.type == "cuda" and kernels.available(device) else "chunked"
    if impl == "triton" and (reason := kernels.unavailable_reason(device)) is not None:
        raise ConfigError(f"relation_impl=triton cannot run here: {reason}; use relation_impl=chunked (or auto)")
    return impl


def relation_loss(teacher_qkv: Sequence[torch.Tensor], student_qkv: Sequence[torch.Tensor],
                  attention_mask: torch.Tensor, spec: RelationSpec | None = None, *,
                  num_relation_heads: int | None = None,
                  relations: Mapping[tuple[int, int], float] | str | None = None,
                  chunk_size: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted MiniLMv2 relation loss and its per-relation parts.

    Args:
        teacher_qkv: (query, key, value) of the teacher layer, each [B, S, H_t], any float dtype;
            treated as constants (no gradient reaches them).
        student_qkv: (query, key, value) of the student layer, each [B, S, H_s]; H_s may differ from H_t.
        attention_mask: [B, S], 1 (or True) at real tokens, 0 at padding, anywhere in the row.
        spec: the settings as one `RelationSpec`; or, instead, these three (impl "chunked"):
        num_relation_heads: A_r; must divide H_t and H_s.
        relations: {(m, n): weight}, m, n in 1..3 (1 = query, 2 = key, 3 = value), or the same as text
            ("qq:1,kk:1,vv:1", see `parse_relations`).
        chunk_size: None for the reference implementation (materialises [B, A_r, S, S]); an int for
            the chunked one, which holds [B, A_r, chunk_size, S] at a time.

    Returns (total, parts): total = sum of weight * relation loss, a float32 scalar with a graph to
    the student tensors; parts maps relation_name -> that relation's unweighted loss, detached.
    An example whose mask is all zeros contributes 0 to the batch mean (which still divides by B).
    """
    spec = RelationSpec.from_settings(spec, num_relation_heads=num_relation_heads, relations=relations,
                                      chunk_size=chunk_size)
    check_relation_inputs(teacher_qkv, student_qkv, attention_mask, spec)
    device = student_qkv[0].device
    impl = resolve_relation_impl(spec.impl, device) if spec.impl == "auto" else spec.impl
    if impl == "triton":
        from .kernels import relation_loss_triton

        return relation_loss_triton(teacher_qkv, student_qkv, attention_mask, spec)
    chunk = None if impl == "reference" else spec.chunk_size
    valid, row_weight = row_weights(attention_mask, device, spec.num_relation_heads)
    key_pad = ~valid
    key_bias = padding_key_bias(valid) if chunk is not None else None
    heads = spec.num_relation_heads

    # one float32 version of each projection (the tensor itself when already float32): the gradients
    # of all relations that use it add up in float32 and are rounded to its dtype once
    teacher32 = [t.detach().float() for t in teacher_qkv]
    student32 = [s.float() for s in student_qkv]
    total = torch.zeros((), dtype=torch.float32, device=device)
    parts: dict[str, torch.Tensor] = {}
    with torch.autocast(device.type, enabled=False):     # float32 logits even inside an autocast region
        for (m, n), weight in spec.relations.items():
            t_m, t_n = teacher32[m - 1], teacher32[n - 1]
            s_m, s_n = student32[m - 1], student32[n - 1]
            if chunk is None:
                loss = _reference_relation(t_m, t_n, s_m, s_n, key_pad, row_weight, heads)
            else:
                loss = _ChunkedRelationKL.apply(t_m, t_n, s_m, s_n, key_bias, row_weight, heads, chunk)
            parts[relation_name((m, n))] = loss.detach()
            total = total + weight * loss
    return total, parts


def _reference_relation(t_m, t_n, s_m, s_n, key_pad, row_weight, num_heads):
    """One relation's loss, plain autograd over the full (B, A, S, S) matrices."""
    def logits(x_m, x_n):
        b, s, h = x_m.shape
        d = h // num_heads
        q = x_m.view(b, s, num_heads, d).transpose(1, 2)                   # (B, A, S, d)
        k = x_n.view(b, s, num_heads, d).transpose(1, 2)
        z = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)              # (B, A, S, S)
        return z.masked_fill(key_pad[:, None, None, :], _MASKED)

    with torch.no_grad():
        log_p_t = torch.log_softmax(logits(t_m, t_n), dim=-1)
        p_t = log_p_t.exp()
    log_p_s = torch.log_softmax(logits(s_m, s_n), dim=-1)
    kl = p_t * (log_p_t - log_p_s)                                          # (B, A, S, S)
    kl = kl.masked_fill(key_pad[:, None, None, :], 0.0).sum(dim=-1)         # (B, A, S)
    return (kl.sum(dim=1) * row_weight).sum()


class _ChunkedRelationKL(torch.autograd.Function):
    """One relation's loss, `chunk` query rows at a time, holding [B * A, chunk, S] per buffer.

    apply(t_m, t_n, s_m, s_n, key_bias (B, S) float32 (see `padding_key_bias`), row_weight (B, S) float32,
    num_heads, chunk) -> float32 scalar. Saves the four inputs, the key bias, the row weights and the two (B * A, S) row
    log-sum-exps; backward recomputes each chunk's logits and sends
    row_weight * (softmax(student) - softmax(teacher)) back through the student matmul.

    Each [.., d] head tensor is augmented with two columns (see `_augment`) so that one bmm gives
    z - row_shift + key_bias: the padding mask, and in backward the subtraction of the
    log-sum-exp and the multiplication by the row weight, cost no pass over the [r, S] chunk.
    """

    @staticmethod
    def forward(ctx, t_m, t_n, s_m, s_n, key_bias, row_weight, num_heads, chunk):
        batch, seq, _ = s_m.shape
        bh = batch * num_heads
        t_left, t_right = _augment(t_m, t_n, key_bias, num_heads)      # (B*A, S, d_t + 2), (B*A, d_t + 2, S)
        s_left, s_right = _augment(s_m, s_n, key_bias, num_heads)      # (B*A, S, d_s + 2), (B*A, d_s + 2, S)
        lse_t = torch.empty((bh, seq), dtype=torch.float32, device=s_m.device)
        lse_s = torch.empty_like(lse_t)
        # buffers reused by every chunk: a fresh [B*A, c, S] allocation per chunk costs page faults on CPU
        buffers = _chunk_buffers(3, bh, min(chunk, seq), seq, s_m.device)
        valid_row = row_weight > 0
        total = torch.zeros((), dtype=torch.float32, device=s_m.device)
        for start in range(0, seq, chunk):
            stop = min(start + chunk, seq)
            z_t, z_s, e_t = (buf[: bh * (stop - start) * seq].view(bh, stop - start, seq) for buf in buffers)
            torch.bmm(t_left[:, start:stop], t_right, out=z_t)                      # (B*A, r, S), padded keys at -1e30
            torch.bmm(s_left[:, start:stop], s_right, out=z_s)
            max_t = z_t.amax(dim=-1, keepdim=True)                                   # (B*A, r, 1)
            z_t.sub_(max_t)
            torch.clamp(z_t, min=_EXP_FLOOR, out=e_t).exp_()                          # unnormalised teacher softmax
            sum_t = e_t.sum(dim=-1)                                                  # (B*A, r)
            # sum_j p_t (z_t - max_t - z_s); padded keys: e_t ~ 1e-38 times z_t - z_s = -1e30 + 1e30 = 0
            cross = z_t.sub_(z_s).mul_(e_t).sum(dim=-1).div_(sum_t)
            max_s = z_s.amax(dim=-1, keepdim=True)
            sum_s = z_s.sub_(max_s).clamp_(min=_EXP_FLOOR).exp_().sum(dim=-1)
            lse_t[:, start:stop] = max_t.squeeze(-1) + sum_t.log()
            lse_s[:, start:stop] = ls = max_s.squeeze(-1) + sum_s.log()
            # KL(p_t || p_s) = sum_j p_t (z_t - z_s) - lse_t + lse_s
            kl = (cross - sum_t.log() + ls).view(batch, num_heads, -1).sum(dim=1)   # (B, r), summed over heads
            w = row_weight[:, start:stop]
            total += torch.where(valid_row[:, start:stop], kl * w, 0.0).sum()
        ctx.save_for_backward(t_m, t_n, s_m, s_n, key_bias, row_weight, lse_t, lse_s)
        ctx.num_heads, ctx.chunk, ctx.same = num_heads, chunk, s_m is s_n
        return total

    @staticmethod
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return _ChunkedRelationKL._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        t_m, t_n, s_m, s_n, key_bias, row_weight, lse_t, lse_s = ctx.saved_tensors
        num_heads, chunk = ctx.num_heads, ctx.chunk
        batch, seq, width = s_m.shape
        bh = batch * num_heads
        d_s = width // num_heads
        # the row column log(w) - lse turns exp(z + column) into w * softmax; rows of weight 0 (padded
        # queries, all-padding examples) get -1e30 instead, so their exp is ~0 on both sides
        weighted = (row_weight > 0).unsqueeze(1).expand(batch, num_heads, seq).reshape(bh, seq)   # (B*A, S)
        log_w = row_weight.log().unsqueeze(1).expand(batch, num_heads, seq).reshape(bh, seq)
        t_left, t_right = _augment(t_m, t_n, key_bias, num_heads,
                                   row_shift=torch.where(weighted, log_w - lse_t, _MASKED))
        s_left, s_right = _augment(s_m, s_n, key_bias, num_heads,
                                   row_shift=torch.where(weighted, log_w - lse_s, _MASKED))
        s_m_scaled, s_n_heads_t = s_left[..., :d_s], s_right[:, :d_s]              # (B*A, S, d_s), (B*A, d_s, S)
        d_m = torch.empty((bh, seq, d_s), dtype=torch.float32, device=s_m.device)  # each row chunk written once
        # accumulated over chunks, transposed: g sits in the matmul untransposed, and batched gemm
        # on CPU takes a strided accumulator only through a slow per-matrix loop
        d_n_t = torch.zeros((bh, d_s, seq), dtype=torch.float32, device=s_m.device)
        buffers = _chunk_buffers(2, bh, min(chunk, seq), seq, s_m.device)
        for start in range(0, seq, chunk):
            stop = min(start + chunk, seq)
            p_t, g = (buf[: bh * (stop - start) * seq].view(bh, stop - start, seq) for buf in buffers)
            torch.bmm(t_left[:, start:stop], t_right, out=p_t).clamp_(min=_EXP_FLOOR).exp_()   # w * softmax(teacher)
            torch.bmm(s_left[:, start:stop], s_right, out=g).clamp_(min=_EXP_FLOOR).exp_()
            g.sub_(p_t)                                                   # dloss/dz_s, (B*A, r, S); padded keys: 0
            # z_s = (s_m / sqrt(d)) s_n^T: dz/ds_m = g s_n / sqrt(d), dz/ds_n = g^T s_m / sqrt(d)
            d_m[:, start:stop] = torch.bmm(g, s_n_heads_t.mT)                       # (B*A, r, d_s)
            d_n_t.baddbmm_(s_m_scaled[:, start:stop].mT, g)                          # (B*A, d_s, S)
        scale = grad_out.float() / math.sqrt(d_s)
        d_m.mul_(scale)
        d_n = d_n_t.mT.mul_(grad_out.float())
        if ctx.same:
            return None, None, _merge_heads(d_m.add_(d_n), batch, s_m.dtype), None, None, None, None, None
        return (None, None, _merge_heads(d_m, batch, s_m.dtype), _merge_heads(d_n, batch, s_n.dtype),
                None, None, None, None)


def _augment(x_m, x_n, key_bias, num_heads, row_shift=None):
    """Head-split float32 copies of x_m (scaled by 1/sqrt(d)) and x_n, each with two extra columns.

    left = [x_m / sqrt(d), row_shift_i, 1] as (B * A, S, d + 2) and right = [x_n, 1, key_bias_j]
    stored transposed as (B * A, d + 2, S), so left @ right = x_m x_n^T / sqrt(d) + row_shift_i +
    key_bias_j: the logits with padded keys at -1e30 and each row shifted. row_shift is (B * A, S),
    or None for 0.
    """
    batch, seq, width = x_m.shape
    d = width // num_heads
    left = x_m.new_empty((batch, num_heads, seq, d + 2), dtype=torch.float32)
    right = x_n.new_empty((batch, num_heads, d + 2, seq), dtype=torch.float32)
    left[..., :d] = x_m.view(batch, seq, num_heads, d).transpose(1, 2)
    left[..., :d] *= 1.0 / math.sqrt(d)                                       # in float32, not the input dtype
    left[..., d] = 0.0 if row_shift is None else row_shift.view(batch, num_heads, seq)
    left[..., d + 1] = 1.0
    right[:, :, :d] = x_n.view(batch, seq, num_heads, d).permute(0, 2, 3, 1)
    right[:, :, d] = 1.0
    right[:, :, d + 1] = key_bias.unsqueeze(1)
    return left.view(batch * num_heads, seq, d + 2), right.view(batch * num_heads, d + 2, seq)


def _chunk_buffers(count, bh, rows, seq, device):
    return [torch.empty(bh * rows * seq, dtype=torch.float32, device=device) for _ in range(count)]


def _merge_heads(x: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """(B * A, S, d) -> [B, S, A * d] in `dtype`."""
    bh, seq, d = x.shape
    return x.view(batch, bh // batch, seq, d).transpose(1, 2).reshape(batch, seq, -1).to(dtype)
