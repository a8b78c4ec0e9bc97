"""Fused Triton kernels for the MiniLMv2 relation KL: forward and backward, no S x S matrix in memory.

For one relation (m, n), per (example b, relation head h), with d_t = H_t / A_r, d_s = H_s / A_r:

    z_t = X_m^t X_n^t^T / sqrt(d_t),  z_s = X_m^s X_n^s^T / sqrt(d_s),  padded keys at -1e30
    KL_i = sum_j p_t,ij (log p_t,ij - log p_s,ij) = sum_j p_t,ij (z_t,ij - z_s,ij) - lse_t,i + lse_s,i
    loss = sum_{b, h, i} row_weight_b,i * KL_b,h,i        row_weight = valid / (B * A_r * n_b)

Forward (`_relation_kl_fwd`): one program per (block of BLOCK_M query rows, b * A_r + h). The two
row blocks of queries stay in registers; the program walks the keys BLOCK_N at a time, computes
both logit tiles with tl.dot, and keeps an online log-sum-exp for each side plus the running
cross term sum_j exp(z_t - max_t) (z_t - z_s), rescaled whenever the teacher's running max moves.
It writes per row KL_i and the two log-sum-exps (B * A_r * S floats each), nothing per key.

Backward (`_relation_kl_bwd`): one program per (block of BLOCK_N keys, b * A_r + h). It keeps its
key tiles in registers, walks the query rows, recomputes both logit tiles and, from the saved
log-sum-exps, G = w_i (softmax(z_s) - softmax(z_t)), the gradient of the loss w.r.t. z_s. Then
    dX_n^s[j] += sum_i G_ij X_m^s[i] / sqrt(d_s)   (accumulated in registers, added once)
    dX_m^s[i] += sum_j G_ij X_n^s[j] / sqrt(d_s)   (added with fp32 atomics, one tile per step)
Both go into float32 accumulators of the student tensors' [B, S, H_s] shape, so that m == n (the
same tensor receives both terms) and several relations sharing a tensor simply add up. Atomic
addition makes the gradient's last bits depend on the order the GPU schedules programs in.

Grid (`launch_grid`): one axis of B * A_r * cdiv(S, BLOCK) programs, the blocks of one (b, h) pair
adjacent, since CUDA's y and z axes stop at 65,535 (B * A_r reaches that at B = 1366 with A_r = 48)
and x takes 2**31 - 1, more than the 32-bit offsets below allow anyway.

Tiles (`gpu_blocks`, the defaults; `blocks=` overrides): chosen per kernel, inputs (all four half, or
float32 products), precision ("ieee", or the TF32 ones) and head tile (max(BLOCK_DT, BLOCK_DS): 16 for
BERT-base's 768 / 384 at the default A_r = 48, 32 at A_r = 24, 64 at 12, 128 at 6, 256 at 3) from
ptxas's report for sm_80, sm_86 and sm_90, compiled ahead of time without a GPU
(tools/bench/kernel_spills.py; tools/bench/results/kernel_spills.md has the defaults at A_r = 48, 24,
12, 6, 3 and the candidates at 48, `--candidates-at 24,12,6,3` the others): among tiles with BLOCK_M,
BLOCK_N in 16..64 and 4 warps, one of the largest that on all three spills no register, keeps some
headroom (at most 240 of the 255 registers a thread may hold) and fits the per-block shared memory.
Every program holds its row block of both sides in registers, so a wider head needs smaller tiles,
and float32 products hold more live values than half inputs' TF32 ones ("ieee" float32 products are
FMA loops over registers). The float32 backward is the heaviest (two logit tiles, two probability
tiles, its gradient tile and the key-side accumulator at once) and the one exception: at A_r = 48
("ieee") it takes 16 query rows x 64 keys and 1 stage, 128 registers on all three, not the former
32 x 64 / 2 stages, which does not spill there but holds 224-236 registers (its 1-stage variant
spills on sm_86) and spills at A_r = 24 and 12 (kilobytes per thread at 12); "tf32x3" takes
32 x 32. Half inputs' "ieee" backward takes 64 x 64 at A_r = 48. The forward takes 64 x 32 for float32
("ieee" 64 x 64 needs 254 registers on sm_80) and 64 x 64 for half inputs up to head tile 128.
num_stages is 1 where pipelining the loop's loads pushed a tile over.
Head tile 256 (wider heads read as 256) takes 16-row tiles, 8 warps where 4 do not fit; there no
tile fits the float32 backward with TF32 products (it spills) and the float32 "tf32x3" forward holds
about 250 registers: use more relation heads.

Inside the kernels logits live in base 2 (scaled by log2(e)) so that every exponential is one
exp2; the log-sum-exps are saved in base 2 and the KL is converted back with ln(2).
Padding: key_bias (distill.relations.padding_key_bias) is 0 at real tokens and -1e30 at padding
(docs/design.md); key columns past the sequence end (a tile's tail) load the same -1e30, so their
exp2 is exactly 0 next to any real key.
Only real keys (bias == 0) enter the cross term, and only rows of nonzero weight the gradient,
so a padded row never multiplies a weight by a difference of two -1e30's. A row of an
all-padding example stays finite (all its logits are -1e30) and has weight 0.

Offsets are 32-bit: each [B, S, H] input must span fewer than 2**31 elements (checked).
Inputs are read in their own dtype ([B, S, H] with unit stride along H; any batch and sequence
stride) and converted to float32 on chip; all arithmetic is float32. `precision` is tl.dot's
input_precision for float32 operands on the GPU: "ieee" (exact float32 FMA, the default),
"tf32x3" (three TF32 products on the tensor cores, about float32 accuracy) or "tf32" (10-bit
mantissa: not accurate enough for the 1e-4 target). The logit products of float16 / bfloat16
inputs are exact in TF32, so those use "tf32" regardless. The interpreter (TRITON_INTERPRET=1)
ignores it and computes in numpy float32.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..errors import ConfigError
from .support import interpreting

LOG2E = 1.4426950408889634     # scales natural-log logits to base 2 for exp2/log2 (the kernels' literal ln 2 undoes it)


@triton.jit
def _head_tile(X, b, stride_b, pos, stride_s, h, d, cols, pos_ok, col_ok):
    """Rows `pos` of relation head h (columns h*d .. h*d + d) of example b of a [B, S, H] tensor, as float32."""
    return tl.load(X + b * stride_b + pos[:, None] * stride_s + h * d + cols[None, :],
                   mask=pos_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _program_block(seq, num_heads, d_t, d_s, BLOCK: tl.constexpr, BLOCK_DT: tl.constexpr, BLOCK_DS: tl.constexpr):
    """This program's place in the one-axis grid of `launch_grid`: program p = bh * cdiv(seq, BLOCK) + k
    takes bh = b * A_r + h (example b, head h) and its k-th block of BLOCK positions (which are < seq),
    the teacher and student head columns and which are < d."""
    blocks = tl.cdiv(seq, BLOCK)
    program = tl.program_id(0)
    bh = program // blocks
    pos = (program % blocks) * BLOCK + tl.arange(0, BLOCK)
    cols_t = tl.arange(0, BLOCK_DT)
    cols_s = tl.arange(0, BLOCK_DS)
    return bh, bh // num_heads, bh % num_heads, pos, pos < seq, cols_t, cols_s, cols_t < d_t, cols_s < d_s


@triton.jit
def _relation_kl_fwd(
    TM, TN, SM, SN, KEY_BIAS, KL, LSE_T, LSE_S,
    stride_tm_b, stride_tm_s, stride_tn_b, stride_tn_s,
    stride_sm_b, stride_sm_s, stride_sn_b, stride_sn_s,
    stride_kb_b,
    seq, num_heads, d_t, d_s, scale_t, scale_s,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DT: tl.constexpr, BLOCK_DS: tl.constexpr,
    PREC_T: tl.constexpr, PREC_S: tl.constexpr,
):
    bh, b, h, rows, row_ok, cols_t, cols_s, dt_ok, ds_ok = _program_block(seq, num_heads, d_t, d_s,
                                                                           BLOCK_M, BLOCK_DT, BLOCK_DS)

    q_t = _head_tile(TM, b, stride_tm_b, rows, stride_tm_s, h, d_t, cols_t, row_ok, dt_ok)
    q_s = _head_tile(SM, b, stride_sm_b, rows, stride_sm_s, h, d_s, cols_s, row_ok, ds_ok)

    max_t = tl.full([BLOCK_M], float("-inf"), tl.float32)
    max_s = tl.full([BLOCK_M], float("-inf"), tl.float32)
    sum_t = tl.zeros([BLOCK_M], tl.float32)
    sum_s = tl.zeros([BLOCK_M], tl.float32)
    cross = tl.zeros([BLOCK_M], tl.float32)     # sum_j exp2(z_t - max_t) (z_t - z_s), base 2
    for start in range(0, seq, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        key_ok = keys < seq
        k_t = _head_tile(TN, b, stride_tn_b, keys, stride_tn_s, h, d_t, cols_t, key_ok, dt_ok)
        k_s = _head_tile(SN, b, stride_sn_b, keys, stride_sn_s, h, d_s, cols_s, key_ok, ds_ok)
        bias = tl.load(KEY_BIAS + b * stride_kb_b + keys, mask=key_ok, other=-1e30)
        real = (bias == 0.0)[None, :]
        z_t = tl.dot(q_t, tl.trans(k_t), input_precision=PREC_T) * scale_t + bias[None, :]
        z_s = tl.dot(q_s, tl.trans(k_s), input_precision=PREC_S) * scale_s + bias[None, :]

        new_max_t = tl.maximum(max_t, tl.max(z_t, 1))
        alpha = tl.exp2(max_t - new_max_t)
        e_t = tl.exp2(z_t - new_max_t[:, None])
        sum_t = sum_t * alpha + tl.sum(e_t, 1)
        cross = cross * alpha + tl.sum(tl.where(real, e_t * (z_t - z_s), 0.0), 1)
        max_t = new_max_t

        new_max_s = tl.maximum(max_s, tl.max(z_s, 1))
        sum_s = sum_s * tl.exp2(max_s - new_max_s) + tl.sum(tl.exp2(z_s - new_max_s[:, None]), 1)
        max_s = new_max_s

    lse_t = max_t + tl.log2(sum_t)
    lse_s = max_s + tl.log2(sum_s)
    kl = (cross / sum_t - lse_t + lse_s) * 0.6931471805599453
    out = bh * seq + rows
    tl.store(KL + out, kl, mask=row_ok)
    tl.store(LSE_T + out, lse_t, mask=row_ok)
    tl.store(LSE_S + out, lse_s, mask=row_ok)


@triton.jit
def _relation_kl_bwd(
    TM, TN, SM, SN, KEY_BIAS, ROW_W, LSE_T, LSE_S, DM, DN,
    stride_tm_b, stride_tm_s, stride_tn_b, stride_tn_s,
    stride_sm_b, stride_sm_s, stride_sn_b, stride_sn_s,
    stride_kb_b, stride_w_b, stride_dm_b, stride_dm_s, stride_dn_b, stride_dn_s,
    seq, num_heads, d_t, d_s, scale_t, scale_s, grad_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DT: tl.constexpr, BLOCK_DS: tl.constexpr,
    PREC_T: tl.constexpr, PREC_S: tl.constexpr, PREC_G: tl.constexpr,
):
    bh, b, h, keys, key_ok, cols_t, cols_s, dt_ok, ds_ok = _program_block(seq, num_heads, d_t, d_s,
                                                                           BLOCK_N, BLOCK_DT, BLOCK_DS)

    k_t = _head_tile(TN, b, stride_tn_b, keys, stride_tn_s, h, d_t, cols_t, key_ok, dt_ok)
    k_s = _head_tile(SN, b, stride_sn_b, keys, stride_sn_s, h, d_s, cols_s, key_ok, ds_ok)
    bias = tl.load(KEY_BIAS + b * stride_kb_b + keys, mask=key_ok, other=-1e30)
    real = (bias == 0.0)[None, :]

    d_k = tl.zeros([BLOCK_N, BLOCK_DS], tl.float32)
    for start in range(0, seq, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < seq
        w = tl.load(ROW_W + b * stride_w_b + rows, mask=row_ok, other=0.0)
        q_t = _head_tile(TM, b, stride_tm_b, rows, stride_tm_s, h, d_t, cols_t, row_ok, dt_ok)
        q_s = _head_tile(SM, b, stride_sm_b, rows, stride_sm_s, h, d_s, cols_s, row_ok, ds_ok)
        lse_t = tl.load(LSE_T + bh * seq + rows, mask=row_ok, other=0.0)
        lse_s = tl.load(LSE_S + bh * seq + rows, mask=row_ok, other=0.0)
        z_t = tl.dot(q_t, tl.trans(k_t), input_precision=PREC_T) * scale_t + bias[None, :]
        z_s = tl.dot(q_s, tl.trans(k_s), input_precision=PREC_S) * scale_s + bias[None, :]
        p_t = tl.exp2(z_t - lse_t[:, None])
        p_s = tl.exp2(z_s - lse_s[:, None])
        g = tl.where(real & (w != 0.0)[:, None], (p_s - p_t) * w[:, None], 0.0)     # dloss / dz_s
        d_k += tl.dot(tl.trans(g), q_s, input_precision=PREC_G)
        d_q = tl.dot(g, k_s, input_precision=PREC_G) * grad_scale
        tl.atomic_add(DM + b * stride_dm_b + rows[:, None] * stride_dm_s + h * d_s + cols_s[None, :], d_q,
                      mask=row_ok[:, None] & ds_ok[None, :], sem="relaxed")
    tl.atomic_add(DN + b * stride_dn_b + keys[:, None] * stride_dn_s + h * d_s + cols_s[None, :], d_k * grad_scale,
                  mask=key_ok[:, None] & ds_ok[None, :], sem="relaxed")


def _head_block(d: int) -> int:
    # tl.dot needs every dimension >= 16 on the GPU; the extra columns load as zeros
    return max(16, triton.next_power_of_2(d))


CUDA_GRID_LIMITS = (2**31 - 1, 65535, 65535)     # the largest grid dimensions x, y, z a CUDA launch takes


def launch_grid(batch_heads: int, seq: int, block: int) -> tuple[int]:
    """The kernels' grid: one axis of batch_heads (B * A_r) x cdiv(seq, block) programs, each (b, h) pair's
    blocks adjacent (they read the same keys). One axis because y and z stop at 65,535 (B * A_r reaches that
    at B = 1366 with A_r = 48) while x goes to 2**31 - 1, which the 32-bit offsets bound anyway: B * A_r * S
    <= B * S * H_s < 2**31 (`_unit_stride`). ValueError beyond CUDA's limit."""
    if batch_heads < 1 or seq < 1 or block < 1:
        raise ValueError(f"launch_grid({batch_heads}, {seq}, {block}): B * A_r, S and the block must be positive")
    programs = batch_heads * -(-seq // block)
    if programs > CUDA_GRID_LIMITS[0]:
        raise ConfigError(f"B * A_r = {batch_heads} at S = {seq} needs {programs:,} programs of {block} positions, "
                         f"over CUDA's grid limit of {CUDA_GRID_LIMITS[0]:,}: split the batch")
    return (programs,)


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] * x.stride(0) >= 2**31:
        # the kernels index with 32-bit offsets (b * stride_b + s * stride_s + column)
        raise ConfigError(f"a [B, S, H] = {list(x.shape)} tensor spans 2**31 elements or more: the Triton relation "
                         f"loss indexes with 32-bit offsets; split the batch")
    return x if x.stride(-1) == 1 else x.contiguous()


def _dot_precision(x_m: torch.Tensor, x_n: torch.Tensor, precision: str) -> str:
    low = (torch.float16, torch.bfloat16)
    return "tf32" if x_m.dtype in low and x_n.dtype in low else precision


Blocks = tuple[int, int, int, int]      # (BLOCK_M query rows, BLOCK_N keys, num_warps, num_stages)

INTERPRETER_BLOCKS: Blocks = (16, 16, 1, 1)
HEAD_TILES = (16, 32, 64, 128, 256)       # max(BLOCK_DT, BLOCK_DS); above 256 read as 256
# The GPU's default tiles, BLOCK_M x BLOCK_N / num_warps / num_stages, per (kernel, inputs, products) and head tile:
# inputs "half" when all four Q/K/V tensors are float16 / bfloat16, else "float32"; products "ieee" or "tf32" (the
# `precision` of float32 products: "tf32x3" and "tf32" read as "tf32"). Chosen from
# tools/bench/results/kernel_spills.md (the module's docstring says how).
GPU_TILES: dict[tuple[str, str, str], tuple[str, ...]] = {
    # head tile:                       16           32           64           128          256
    ("forward", "float32", "ieee"): ("64x32/4/2", "64x32/4/2", "32x32/4/2", "16x32/4/1", "16x32/4/1"),
    ("forward", "float32", "tf32"): ("64x64/4/2", "64x32/4/2", "32x64/4/2", "16x32/4/1", "16x32/8/1"),
    ("forward", "half", "ieee"): ("64x64/4/2", "64x64/4/2", "64x64/4/2", "64x64/4/2", "16x32/4/1"),
    ("forward", "half", "tf32"): ("64x64/4/2", "64x64/4/2", "64x64/4/2", "64x64/4/2", "16x32/4/1"),
    ("backward", "float32", "ieee"): ("16x64/4/1", "32x64/4/1", "32x32/4/1", "16x16/4/1", "16x32/8/1"),
    ("backward", "float32", "tf32"): ("32x32/4/1", "32x32/4/1", "16x32/4/1", "16x16/4/1", "16x16/4/1"),
    ("backward", "half", "ieee"): ("64x64/4/2", "32x64/4/2", "32x64/4/2", "32x32/4/1", "16x32/4/1"),
    ("backward", "half", "tf32"): ("32x64/4/2", "32x64/4/2", "16x64/4/1", "32x32/4/1", "16x32/4/1"),
}


def parse_tiles(text: str) -> Blocks:
    """'64x32/4/2' -> (64, 32, 4, 2): BLOCK_M x BLOCK_N / num_warps / num_stages."""
    tiles, warps, stages = text.split("/")
    block_m, block_n = tiles.split("x")
    return int(block_m), int(block_n), int(warps), int(stages)


def gpu_blocks(kernel: str, dtype: torch.dtype, head_dim: int, precision: str = "ieee") -> Blocks:
    """The GPU's default (BLOCK_M, BLOCK_N, num_warps, num_stages) of "forward" or "backward" for inputs of
    `dtype` (float16 / bfloat16: all four inputs half; anything else reads as float32), a relation head of
    `head_dim` columns (the larger of d_t and d_s) and tl.dot precision `precision` (module docstring)."""
    if kernel not in ("forward", "backward"):
        raise ValueError(f"kernel={kernel!r}: choose forward or backward")
    inputs = "half" if dtype in (torch.float16, torch.bfloat16) else "float32"
    products = "ieee" if precision == "ieee" else "tf32"
    column = HEAD_TILES.index(min(_head_block(head_dim), HEAD_TILES[-1]))
    return parse_tiles(GPU_TILES[kernel, inputs, products][column])


def default_blocks(kernel: str, dtype: torch.dtype = torch.float32, head_dim: int = 16, precision: str = "ieee", *,
                   interpreted: bool | None = None) -> Blocks:
    """The tiles of "forward" or "backward": tiny ones in the interpreter (each tile operation is a numpy
    call there, and 16 still walks several blocks at the test shapes; `interpreted` defaults to whether
    TRITON_INTERPRET is set), else `gpu_blocks`."""
    if interpreting() if interpreted is None else interpreted:
        return INTERPRETER_BLOCKS
    return gpu_blocks(kernel, dtype, head_dim, precision)


def largest_default_block(interpreted: bool | None = None) -> int:
    """The largest BLOCK_M or BLOCK_N of any default tiles: the interpreter's, or (not interpreted) the GPU's."""
    if interpreting() if interpreted is None else interpreted:
        return max(INTERPRETER_BLOCKS[:2])
    return max(max(parse_tiles(t)[:2]) for row in GPU_TILES.values() for t in row)


def _tile_dtype(*inputs: torch.Tensor) -> torch.dtype:
    """The inputs' dtype as `gpu_blocks` reads it: half when all are float16 / bfloat16, else float32."""
    half = (torch.float16, torch.bfloat16)
    return inputs[0].dtype if all(x.dtype in half for x in inputs) else torch.float32


def split_blocks(blocks) -> tuple[Blocks | None, Blocks | None]:
    """None -> (None, None) (the defaults); one (BLOCK_M, BLOCK_N, warps, stages) -> for both kernels;
    a pair (forward, backward) of such tuples or None -> as given."""
    if blocks is None:
        return None, None
    def one(b):
        if b is None:
            return None
        if not (isinstance(b, (tuple, list)) and len(b) == 4 and all(isinstance(v, int) and v >= 1 for v in b)):
            raise ConfigError(f"blocks {blocks!r}: give (BLOCK_M, BLOCK_N, num_warps, num_stages) of positive "
                             f"integers, or a pair (forward, backward) of them")
        block_m, block_n = b[0], b[1]
        if block_m & (block_m - 1) or block_n & (block_n - 1) or (not interpreting() and min(block_m, block_n) < 16):
            raise ConfigError(f"blocks {blocks!r}: BLOCK_M and BLOCK_N must be powers of 2 (at least 16 on the GPU)")
        return tuple(b)
    if isinstance(blocks, (tuple, list)) and len(blocks) == 2:
        return one(blocks[0]), one(blocks[1])
    b = one(blocks)
    return b, b


def relation_kl_forward(t_m, t_n, s_m, s_n, key_bias, num_heads: int, *, precision: str = "ieee",
                        blocks: Blocks | None = None):
    """One relation's per-row KL and base-2 log-sum-exps, each (B, A_r, S) float32."""
    batch, seq, width_t = t_m.shape
    width_s = s_m.shape[2]
    d_t, d_s = width_t // num_heads, width_s // num_heads
    block_m, block_n, warps, stages = blocks or default_blocks("forward", _tile_dtype(t_m, t_n, s_m, s_n),
                                                               max(d_t, d_s), precision)
    t_m, t_n, s_m, s_n = (_unit_stride(x) for x in (t_m, t_n, s_m, s_n))
    kl = torch.empty((batch, num_heads, seq), dtype=torch.float32, device=s_m.device)
    lse_t, lse_s = torch.empty_like(kl), torch.empty_like(kl)
    _relation_kl_fwd[launch_grid(batch * num_heads, seq, block_m)](
        t_m, t_n, s_m, s_n, key_bias, kl, lse_t, lse_s,
        t_m.stride(0), t_m.stride(1), t_n.stride(0), t_n.stride(1),
        s_m.stride(0), s_m.stride(1), s_n.stride(0), s_n.stride(1),
        key_bias.stride(0),
        seq, num_heads, d_t, d_s, LOG2E / math.sqrt(d_t), LOG2E / math.sqrt(d_s),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DT=_head_block(d_t), BLOCK_DS=_head_block(d_s),
        PREC_T=_dot_precision(t_m, t_n, precision), PREC_S=_dot_precision(s_m, s_n, precision),
        num_warps=warps, num_stages=stages,
    )
    return kl, lse_t, lse_s


def relation_kl_backward(t_m, t_n, s_m, s_n, key_bias, row_weight, lse_t, lse_s, d_m, d_n, num_heads: int, *,
                         precision: str = "ieee", blocks: Blocks | None = None) -> None:
    """Add the gradient of sum(row_weight * KL) w.r.t. s_m into d_m and w.r.t. s_n into d_n.

    row_weight (B, S) float32 already carries the upstream gradient; d_m, d_n are float32
    [B, S, H_s] accumulators (unit stride along H) and may be the same tensor.
    """
    batch, seq, width_t = t_m.shape
    width_s = s_m.shape[2]
    d_t, d_s = width_t // num_heads, width_s // num_heads
    block_m, block_n, warps, stages = blocks or default_blocks("backward", _tile_dtype(t_m, t_n, s_m, s_n),
                                                               max(d_t, d_s), precision)
    t_m, t_n, s_m, s_n = (_unit_stride(x) for x in (t_m, t_n, s_m, s_n))
    _relation_kl_bwd[launch_grid(batch * num_heads, seq, block_n)](
        t_m, t_n, s_m, s_n, key_bias, row_weight, lse_t, lse_s, d_m, d_n,
        t_m.stride(0), t_m.stride(1), t_n.stride(0), t_n.stride(1),
        s_m.stride(0), s_m.stride(1), s_n.stride(0), s_n.stride(1),
        key_bias.stride(0), row_weight.stride(0), d_m.stride(0), d_m.stride(1), d_n.stride(0), d_n.stride(1),
        seq, num_heads, d_t, d_s, LOG2E / math.sqrt(d_t), LOG2E / math.sqrt(d_s), 1.0 / math.sqrt(d_s),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DT=_head_block(d_t), BLOCK_DS=_head_block(d_s),
        PREC_T=_dot_precision(t_m, t_n, precision), PREC_S=_dot_precision(s_m, s_n, precision), PREC_G=precision,
        num_warps=warps, num_stages=stages,
    )


class TritonRelationKL(torch.autograd.Function):
    """All relations of one layer pair in one autograd node.

    apply(key_bias (B, S) float32, row_weight (B, S) float32, valid (B, S) bool, num_heads,
          pairs ((m, n), ...), precision, blocks (see `split_blocks`), tq, tk, tv, sq, sk, sv)
    -> (R,) float32: each relation's loss. Saves the inputs and, per relation, the two (B, A_r, S)
    log-sum-exps; backward runs one kernel per relation into float32 gradient accumulators, one
    per student tensor, rounded to each tensor's dtype once.
    """

    @staticmethod
    def forward(ctx, key_bias, row_weight, valid, num_heads, pairs, precision, blocks, tq, tk, tv, sq, sk, sv):
        teacher, student = (tq, tk, tv), (sq, sk, sv)
        forward_blocks, backward_blocks = split_blocks(blocks)
        losses, saved_lse = [], []
        for m, n in pairs:
            kl, lse_t, lse_s = relation_kl_forward(teacher[m - 1], teacher[n - 1], student[m - 1], student[n - 1],
                                                   key_bias, num_heads, precision=precision, blocks=forward_blocks)
            per_row = kl.sum(dim=1)                                              # (B, S), summed over heads
            losses.append(torch.where(valid, per_row * row_weight, 0.0).sum())
            saved_lse += [lse_t, lse_s]
        ctx.save_for_backward(key_bias, row_weight, tq, tk, tv, sq, sk, sv, *saved_lse)
        ctx.num_heads, ctx.pairs, ctx.precision, ctx.blocks = num_heads, pairs, precision, backward_blocks
        return torch.stack(losses)

    @staticmethod
    def backward(ctx, grad_losses):
        key_bias, row_weight, tq, tk, tv, sq, sk, sv, *saved_lse = ctx.saved_tensors
        teacher, student = (tq, tk, tv), (sq, sk, sv)
        grads: list[torch.Tensor | None] = [None, None, None]
        for index in {i for pair in ctx.pairs for i in pair}:
            if ctx.needs_input_grad[10 + index - 1]:
                grads[index - 1] = torch.zeros(student[index - 1].shape, dtype=torch.float32,
                                               device=student[index - 1].device)
        grad_losses = grad_losses.float()
        for r, (m, n) in enumerate(ctx.pairs):
            if grads[m - 1] is None and grads[n - 1] is None:
                continue
            d_m = grads[m - 1] if grads[m - 1] is not None else torch.empty_like(grads[n - 1])   # unused sink
            d_n = grads[n - 1] if grads[n - 1] is not None else torch.empty_like(d_m)
            relation_kl_backward(teacher[m - 1], teacher[n - 1], student[m - 1], student[n - 1], key_bias,
                                 row_weight * grad_losses[r], saved_lse[2 * r], saved_lse[2 * r + 1], d_m, d_n,
                                 ctx.num_heads, precision=ctx.precision, blocks=ctx.blocks)
        student_grads = tuple(None if g is None else g.to(s.dtype) for g, s in zip(grads, student, strict=True))
        return (None,) * 10 + student_grads
