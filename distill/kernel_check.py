"""The fused relation kernel proves itself before a run uses it.

    spec, check = settle_relation_spec(spec, device, widths=(768, 384), dtype=torch.bfloat16,
                                       teacher_dtype=torch.float16)

`self_check` runs `distill.kernels.relation_loss_triton` and the chunked
`distill.relations.relation_loss` on the same small random inputs, shaped like the run's (its
relation heads and relations, the teacher and student widths, the student and teacher dtypes,
B = 2 examples of S = `check_seq()` tokens, padding in both: a padded key inside the first example,
the second example's last 25 rows), on the training device, and compares the loss and the student
gradients:

    loss:      |loss_triton - loss_chunked| / |loss_chunked|                  <= 1e-4
    gradients: max |g_triton - g_chunked| / max |g_chunked|, over q, k, v     <= 1e-4 (float32 student),
                                                                                 2e-3 (float16), 1.6e-2 (bfloat16)

(both sides compute in float32; the gradients are rounded to the student's dtype, hence the wider
half-precision bounds, the same as tests/test_kernels.py holds the kernel to against float64). A
compile or launch error, a non-finite value or an error above its bound fails the check. It draws
from its own random generator, so a run's random state is the same with or without it.

S = 16 + twice the largest BLOCK_M / BLOCK_N of any default GPU tile choice (forward and backward,
every dtype, precision and head size: `distill.kernels.relation_kl.gpu_blocks`), 144 with 64-wide
tiles: every program walks three or more key (forward) or query (backward) blocks, so the online
log-sum-exp rescales across blocks, the loop's loads are pipelined (where num_stages is 2) and the
backward's atomics add up from several key blocks, as at training lengths; in the second example the
last block of every tile size holds padding only. S is a multiple of 16, so the kernels are
specialized as for training shapes (multiples of 16) and the compilation of the check is the one
training reuses. On a GPU the check takes well under a second once the kernels are compiled. In
Triton's CPU interpreter the tiles are 16 and S is 48.

`settle_relation_spec` is the one place that decides: the spec resolved for the device
(`RelationSpec.resolved`); when that is "triton", the check; when the check fails, relation_impl
"auto" trains with the chunked loss instead and relation_impl "triton" raises ConfigError, a ValueError (the
command line's `error: ...`, exit 2). With several ranks (torch.distributed initialized, world > 1)
and relation_impl "auto" or "triton", every rank takes part in one all-reduce (MIN of "this rank
can use the kernel": its check passed) so that all ranks train with the same loss: the kernel only
if every rank's check passed; else "auto" falls back on every rank (a rank whose check passed says
that another rank's failed) and "triton" raises on every rank, none left waiting on a collective its
peer never reaches. relation_impl "auto" on a CUDA device where the kernel cannot run (no triton, no
C compiler, ...) also returns a result, not run, whose line says why the run uses the chunked loss.
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

from . import kernels
from .errors import ConfigError
from .relations import RelationSpec, relation_loss, resolve_spec

__all__ = ["SelfCheckResult", "self_check", "settle_relation_spec", "check_seq", "LOSS_TOLERANCE",
           "GRAD_TOLERANCE"]

LOSS_TOLERANCE = 1e-4
GRAD_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
CHECK_BATCH, CHECK_CHUNK = 2, 8
TRAILING_PADDING = 25        # the second example's padded last rows: the last block of every tile size


def check_seq(interpreted: bool | None = None) -> int:
    """The self-check's S: 16 + twice the largest BLOCK_M / BLOCK_N of the default tiles, of the GPU's
    (`distill.kernels.relation_kl.gpu_blocks`: 144) or, interpreted (default: TRITON_INTERPRET is set),
    of the interpreter's (48)."""
    from .kernels.relation_kl import largest_default_block

    return 2 * largest_default_block(interpreted) + 16


@dataclasses.dataclass(frozen=True)
class SelfCheckResult:
    """What `self_check` found. ok: within both tolerances; reason: why not ("" when ok);
    seconds: wall time of the check; loss_err, grad_err: the relative errors (nan when not
    computed); shape: the inputs, in words; fallback: set by `settle_relation_spec` when the run
    trains with the chunked loss because of this result; peers_ok: False when this rank's check
    passed but another rank's failed (or its kernel cannot run), reason then says so; ran: False
    when no check ran because the kernel cannot run on this device (reason: why not)."""

    ok: bool
    reason: str
    seconds: float
    loss_err: float
    grad_err: float
    loss_tolerance: float
    grad_tolerance: float
    device: str
    shape: str
    fallback: bool = False
    peers_ok: bool = True
    ran: bool = True

    def line(self) -> str:
        """The run log's one line (also the TensorBoard text)."""
        tail = "; training with the chunked loss instead (relation_impl=auto)" if self.fallback else ""
        if not self.ran:
            return f"relation kernel not used on {self.device}: {self.reason}{tail}"
        head = (f"relation kernel self-check {'passed' if self.ok else 'FAILED'} on {self.device} in "
                f"{self.seconds:.2f} s against the chunked loss ({self.shape}): loss rel. error {self.loss_err:.1e} "
                f"(tolerance {self.loss_tolerance:g}), student gradient rel. error {self.grad_err:.1e} "
                f"(tolerance {self.grad_tolerance:g})")
        if self.ok and self.peers_ok:
            return f"{head}; training with the fused Triton kernels"
        return f"{head}: {self.reason}{tail}"


def _check_inputs(spec: RelationSpec, widths: tuple[int, int], device: torch.device, dtype: torch.dtype,
                  teacher_dtype: torch.dtype, seq: int):
    """Random teacher / student (q, k, v) of the run's widths and dtypes, and a padded [B, S] mask."""
    gen = torch.Generator().manual_seed(1234)
    teacher = tuple(torch.randn(CHECK_BATCH, seq, widths[0], generator=gen).to(device, teacher_dtype)
                    for _ in range(3))
    student = tuple(torch.randn(CHECK_BATCH, seq, widths[1], generator=gen).to(device, dtype)
                    for _ in range(3))
    mask = torch.ones(CHECK_BATCH, seq, dtype=torch.long)
    mask[0, 5] = 0                           # a padded key inside the first example
    mask[1, seq - TRAILING_PADDING:] = 0     # the second example's last rows padded
    return teacher, student, mask.to(device)


def _loss_and_grads(loss_fn, teacher, student, mask, spec):
    leaves = [s.detach().clone().requires_grad_() for s in student]
    total, _ = loss_fn(teacher, leaves, mask, spec)
    used = sorted({i for pair in spec.relations for i in pair})
    grads = torch.autograd.grad(total, [leaves[i - 1] for i in used])
    return total.detach().double(), [g.detach().double() for g in grads]


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.abs().max().item()
    diff = (got - want).abs().max().item()
    return diff / scale if scale > 0 else diff


def self_check(spec: RelationSpec, widths: tuple[int, int], device: torch.device | str,
               dtype: torch.dtype = torch.float32, teacher_dtype: torch.dtype | None = None) -> SelfCheckResult:
    """Compare `relation_loss_triton` with the chunked loss on `device` (see the module's docstring).

    spec: the run's relation heads and relations (its impl is ignored); widths: (teacher, student)
    hidden sizes; dtype: the student's Q/K/V dtype in training; teacher_dtype: the teacher's
    (default `dtype`). Runs wherever the kernels run (CUDA, or CPU under TRITON_INTERPRET=1);
    never raises for what the kernel does: an exception is a failed check, its reason the error.
    """

    device = torch.device(device)
    teacher_dtype = teacher_dtype or dtype
    loss_tol, grad_tol = LOSS_TOLERANCE, _grad_tolerance(dtype)
    start = time.perf_counter()
    loss_err = grad_err = math.nan
    seq = None
    try:
        seq = check_seq()
        teacher, student, mask = _check_inputs(spec, widths, device, dtype, teacher_dtype, seq)
        chunked = RelationSpec(spec.num_relation_heads, spec.relations, "chunked", CHECK_CHUNK)
        want, want_grads = _loss_and_grads(relation_loss, teacher, student, mask, chunked)
        got, got_grads = _loss_and_grads(kernels.relation_loss_triton, teacher, student, mask, spec)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        loss_err = _rel_err(got, want)
        grad_err = max(_rel_err(g, w) for g, w in zip(got_grads, want_grads, strict=True))
        finite = bool(torch.isfinite(got).item()) and all(bool(torch.isfinite(g).all().item()) for g in got_grads)
        if not finite:
            reason = "the kernel's loss or gradients are not finite"
        elif not loss_err <= loss_tol:
            reason = (f"the kernel's loss {got.item():.6g} differs from the chunked loss {want.item():.6g} "
                      f"beyond the tolerance")
        elif not grad_err <= grad_tol:
            reason = "the kernel's student gradients differ from the chunked loss's beyond the tolerance"
        else:
            reason = ""
    except Exception as exc:        # a compile or launch error, out of resources, ...: the check fails
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {first[:300]}"
    shape = (f"B={CHECK_BATCH}, S={seq or '?'} with padding, A_r={spec.num_relation_heads}, widths "
             f"{widths[0]}/{widths[1]}, student {str(dtype).removeprefix('torch.')}, teacher "
             f"{str(teacher_dtype).removeprefix('torch.')}, relations {','.join(spec.names)}")
    return SelfCheckResult(ok=not reason, reason=reason, seconds=time.perf_counter() - start, loss_err=loss_err,
                           grad_err=grad_err, loss_tolerance=loss_tol, grad_tolerance=grad_tol, device=str(device),
                           shape=shape)


def _grad_tolerance(dtype: torch.dtype) -> float:
    return GRAD_TOLERANCE.get(dtype, GRAD_TOLERANCE[torch.float16])


def _world() -> int:
    """The number of ranks: torch.distributed's world when initialized, else 1."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _every_rank(ok: bool, device: torch.device) -> bool:
    """True when `ok` on every rank: an all-reduce (MIN) of one flag, on the CPU for gloo, on a GPU for nccl."""
    import torch.distributed as dist

    backend = str(dist.get_backend())
    if "nccl" in backend and "gloo" not in backend:
        on = device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    else:
        on = torch.device("cpu")
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=on)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def settle_relation_spec(spec: RelationSpec, device: torch.device | str, *, widths: tuple[int, int],
                         dtype: torch.dtype = torch.float32, teacher_dtype: torch.dtype | None = None,
                         ) -> tuple[RelationSpec, SelfCheckResult | None]:
    """(the spec with its impl settled for `device`, the self-check's result or None when none ran).

    When the impl resolves to "triton" (relation_impl "auto" on CUDA, or "triton"), the kernel is
    checked first (`self_check`); on failure "auto" settles to "chunked" (the result's `fallback`
    set) and "triton" raises ConfigError (a ValueError) naming the failure and the fix. With several ranks, all
    agree (the module's docstring): every rank must call this, with the same spec. relation_impl
    "auto" on CUDA where the kernel cannot run returns a result that did not run (`ran` False).
    """

    device = torch.device(device)
    agree = spec.impl in ("auto", "triton") and _world() > 1     # the same on every rank: the run's settings
    try:
        resolved = resolve_spec(spec, device)
    except ValueError:
        if agree:
            _every_rank(False, device)       # the others learn it before this rank raises, and raise too
        raise
    result = None
    if resolved.impl == "triton":
        result = self_check(spec, widths, device, dtype, teacher_dtype)  # looked up now: tests replace it
    elif spec.impl == "auto" and device.type == "cuda" and (reason := kernels.unavailable_reason(device)):
        result = SelfCheckResult(ok=False, reason=reason, seconds=0.0, loss_err=math.nan, grad_err=math.nan,
                                 loss_tolerance=LOSS_TOLERANCE, grad_tolerance=_grad_tolerance(dtype),
                                 device=str(device), shape="", fallback=True, ran=False)
    usable = resolved.impl == "triton" and result.ok
    if (_every_rank(usable, device) if agree else usable) or resolved.impl != "triton":
        return resolved, result
    if result.ok:
        result = dataclasses.replace(result, peers_ok=False, reason="another rank's self-check failed or its "
                                     "kernel cannot run there, and every rank must train with the same loss")
    if spec.impl == "triton":
        where = (f"on {device} ({result.shape}): {result.reason}" if not result.ok else
                 f"on another rank (this rank's, on {device}, passed), and every rank must train with the same loss")
        raise ConfigError(f"relation_impl=triton: the fused kernel failed its self-check against the chunked loss "
                          f"{where}; use relation_impl=chunked (or auto, which falls back to it by itself)")
    return dataclasses.replace(resolved, impl="chunked"), dataclasses.replace(result, fallback=True)
