"""The fused relation kernel proves itself before a run uses it.

    spec, check = settle_relation_spec(spec, device, widths=(768, 384), dtype=torch.bfloat16,
                                       teacher_dtype=torch.float16)

`self_check` runs `distill.kernels.relation_loss_triton` and the chunked
`distill.relations.relation_loss` on the same small random inputs, shaped like the run's (its
relation heads and relations, the teacher and student widths, the student and teacher dtypes,
B = 2 examples of S = 32 tokens, padding in both, one example's last rows padded), on the
training device, and compares the loss and the student gradients:

    loss:      |loss_triton - loss_chunked| / |loss_chunked|                  <= 1e-4
    gradients: max |g_triton - g_chunked| / max |g_chunked|, over q, k, v     <= 1e-4 (float32 student),
                                                                                 2e-3 (float16), 1.6e-2 (bfloat16)

(both sides compute in float32; the gradients are rounded to the student's dtype, hence the wider
half-precision bounds, the same as tests/test_kernels.py holds the kernel to against float64). A
compile or launch error, a non-finite value or an error above its bound fails the check. It draws
from its own random generator, so a run's random state is the same with or without it. On a GPU
it takes well under a second once the kernels are compiled; S = 32 specializes them as training
shapes do (multiples of 16), so the compilation of the first call is the one training reuses.

`settle_relation_spec` is the one place that decides: the spec resolved for the device
(`RelationSpec.resolved`); when that is "triton", the check; when the check fails, relation_impl
"auto" trains with the chunked loss instead and relation_impl "triton" raises ValueError (the
command line's `error: ...`, exit 2).
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

from ..relations import RelationSpec, relation_loss

__all__ = ["SelfCheckResult", "self_check", "settle_relation_spec", "LOSS_TOLERANCE", "GRAD_TOLERANCE"]

LOSS_TOLERANCE = 1e-4
GRAD_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
CHECK_BATCH, CHECK_SEQ, CHECK_CHUNK = 2, 32, 8


@dataclasses.dataclass(frozen=True)
class SelfCheckResult:
    """What `self_check` found. ok: within both tolerances; reason: why not ("" when ok);
    seconds: wall time of the check; loss_err, grad_err: the relative errors (nan when not
    computed); shape: the inputs, in words; fallback: set by `settle_relation_spec` when the run
    trains with the chunked loss because of this result."""

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

    def line(self) -> str:
        """The run log's one line (also the TensorBoard text)."""
        head = (f"relation kernel self-check {'passed' if self.ok else 'FAILED'} on {self.device} in "
                f"{self.seconds:.2f} s against the chunked loss ({self.shape}): loss rel. error {self.loss_err:.1e} "
                f"(tolerance {self.loss_tolerance:g}), student gradient rel. error {self.grad_err:.1e} "
                f"(tolerance {self.grad_tolerance:g})")
        if self.ok:
            return f"{head}; training with the fused Triton kernels"
        tail = "; training with the chunked loss instead (relation_impl=auto)" if self.fallback else ""
        return f"{head}: {self.reason}{tail}"


def _check_inputs(spec: RelationSpec, widths: tuple[int, int], device: torch.device, dtype: torch.dtype,
                  teacher_dtype: torch.dtype):
    """Random teacher / student (q, k, v) of the run's widths and dtypes, and a padded [B, S] mask."""
    gen = torch.Generator().manual_seed(1234)
    teacher = tuple(torch.randn(CHECK_BATCH, CHECK_SEQ, widths[0], generator=gen).to(device, teacher_dtype)
                    for _ in range(3))
    student = tuple(torch.randn(CHECK_BATCH, CHECK_SEQ, widths[1], generator=gen).to(device, dtype)
                    for _ in range(3))
    mask = torch.ones(CHECK_BATCH, CHECK_SEQ, dtype=torch.long)
    mask[0, 5] = 0                           # a padded key inside the first example
    mask[1, CHECK_SEQ - 9:] = 0              # the second example's last rows padded
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
    from distill import kernels  # looked up at call time, as relation_loss does

    device = torch.device(device)
    teacher_dtype = teacher_dtype or dtype
    loss_tol, grad_tol = LOSS_TOLERANCE, GRAD_TOLERANCE.get(dtype, GRAD_TOLERANCE[torch.float16])
    shape = (f"B={CHECK_BATCH}, S={CHECK_SEQ} with padding, A_r={spec.num_relation_heads}, widths "
             f"{widths[0]}/{widths[1]}, student {str(dtype).removeprefix('torch.')}, teacher "
             f"{str(teacher_dtype).removeprefix('torch.')}, relations {','.join(spec.names)}")
    start = time.perf_counter()
    loss_err = grad_err = math.nan
    try:
        teacher, student, mask = _check_inputs(spec, widths, device, dtype, teacher_dtype)
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
    return SelfCheckResult(ok=not reason, reason=reason, seconds=time.perf_counter() - start, loss_err=loss_err,
                           grad_err=grad_err, loss_tolerance=loss_tol, grad_tolerance=grad_tol, device=str(device),
                           shape=shape)


def settle_relation_spec(spec: RelationSpec, device: torch.device | str, *, widths: tuple[int, int],
                         dtype: torch.dtype = torch.float32, teacher_dtype: torch.dtype | None = None,
                         ) -> tuple[RelationSpec, SelfCheckResult | None]:
    """(the spec with its impl settled for `device`, the self-check's result or None when none ran).

    When the impl resolves to "triton" (relation_impl "auto" on CUDA, or "triton"), the kernel is
    checked first (`self_check`); on failure "auto" settles to "chunked" (the result's `fallback`
    set) and "triton" raises ValueError naming the failure and the fix.
    """
    from distill import kernels  # kernels.self_check, looked up at call time (tests replace it)

    device = torch.device(device)
    resolved = spec.resolved(device)
    if resolved.impl != "triton":
        return resolved, None
    result = kernels.self_check(spec, widths, device, dtype, teacher_dtype)
    if result.ok:
        return resolved, result
    if spec.impl == "triton":
        raise ValueError(f"relation_impl=triton: the fused kernel failed its self-check against the chunked loss on "
                         f"{device} ({result.shape}): {result.reason}; use relation_impl=chunked (or auto, which "
                         f"falls back to it by itself)")
    return dataclasses.replace(resolved, impl="chunked"), dataclasses.replace(result, fallback=True)
