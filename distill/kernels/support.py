"""Whether the fused kernels can run here, without importing Triton: the device, the interpreter
(TRITON_INTERPRET=1), and the host tools Triton needs at a kernel's first launch on a GPU."""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig

import torch

__all__ = ["DOT_PRECISIONS", "interpreting", "host_toolchain_problem", "unavailable_reason", "available"]

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
