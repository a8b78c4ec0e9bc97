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

Before a run uses the kernels, `settle_relation_spec` checks them against the chunked loss on the
training device (`self_check`, distill.kernels.verify: tolerances there) and falls back to the
chunked loss (relation_impl "auto") or refuses (relation_impl "triton") when they fail.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import sysconfig
from typing import Mapping, Sequence

import torch

from ..relations import RelationSpec, check_relation_inputs, padding_key_bias, relation_name, row_weights

__all__ = ["available", "unavailable_reason", "host_toolchain_problem", "relation_loss_triton", "DOT_PRECISIONS",
           "SelfCheckResult", "self_check", "settle_relation_spec", "check_seq"]

# tl.dot's input_precision for float32 operands (see distill.kernels.relation_kl)
DOT_PRECISIONS = ("ieee", "tf32x3", "tf32")


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 before import)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "no", "off")


def _python_include() -> str:
    """Where Triton looks for Python.h (triton.runtime.build: the default scheme, Debian's posix_local read
    as posix_prefix)."""
    scheme = sysconfig.get_default_scheme()
    return sysconfig.get_paths(scheme="posix_prefix" if scheme == "posix_local" else scheme)["include"]


def host_toolchain_problem() -> str | None:
    """None when this host can build the C launcher Triton compiles at a kernel's first launch on a GPU,
    else what is missing and what to install. Triton takes the compiler from CC, else gcc or clang on PATH
    (not `cc`), and includes Python.h from Python's include directory. The interpreter needs neither."""
    problems = []
    compiler = os.environ.get("CC")
    if compiler:
        if shutil.which(compiler) is None:
            problems.append(f"the C compiler CC={compiler!r} is not found: install it, or set CC to an installed "
                            f"compiler (e.g. gcc)")
    elif shutil.which("gcc") is None and shutil.which("clang") is None:
        problems.append("there is no C compiler (CC is unset and neither gcc nor clang is on PATH): apt install gcc "
                        "(or build-essential), or set CC")
    include = _python_include()
    if not os.path.isfile(os.path.join(include, "Python.h")):
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        problems.append(f"Python's headers are missing (no Python.h in {include}): apt install python3-dev "
                        f"(python{version}-dev for this Python {version})")
    if not problems:
        return None
    return "Triton builds a C launcher at the first kernel launch, which this host cannot: " + "; ".join(problems)


def unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """None when the Triton relation loss can run on `device` (default: CUDA), else why not (on CUDA: also
    a missing C compiler or Python headers, `host_toolchain_problem`)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    device = torch.device("cuda" if device is None else device)
    if interpreting():
        return None if device.type == "cpu" else f"TRITON_INTERPRET=1 runs kernels on CPU tensors, not on {device}"
    if device.type != "cuda":
        return (f"the Triton kernels run on CUDA tensors, not on {device} "
                f"(set TRITON_INTERPRET=1 for the CPU interpreter)")
    if not torch.cuda.is_available():
        return "CUDA is not available"
    return host_toolchain_problem()


def available(device: torch.device | str | None = None) -> bool:
    """True when triton is importable and `device` (default CUDA) can run its kernels."""
    return unavailable_reason(device) is None


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
    Raises RuntimeError when triton cannot run on the tensors' device (see `unavailable_reason`).
    """
    spec = RelationSpec.from_settings(spec, num_relation_heads=num_relation_heads, relations=relations,
                                      chunk_size=chunk_size)
    check_relation_inputs(teacher_qkv, student_qkv, attention_mask, spec)
    if precision not in DOT_PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {', '.join(DOT_PRECISIONS)}")
    device = student_qkv[0].device
    reason = unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f"relation_loss_triton cannot run: {reason}; use distill.relations.relation_loss "
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


from .verify import SelfCheckResult, check_seq, self_check, settle_relation_spec  # noqa: E402  (uses the above)
