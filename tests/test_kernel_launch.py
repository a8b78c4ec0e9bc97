"""What the fused relation kernel needs on a GPU host, checked without one (distill.kernels).

- launch limits: the grid (`relation_kl.launch_grid`) stays within CUDA's grid dimensions for any
  B * A_r and S the 32-bit offsets allow, and both launches use it;
- tiles: the default GPU tiles per kernel, dtype, head size and precision, and the self-check's S
  (`check_seq`) spanning several of the largest of them; ahead-of-time compilation for sm_80 /
  sm_86 / sm_90 (tools/bench/kernel_spills.py) shows the default tiles do not spill registers;
- the host toolchain: Triton builds a C launcher at the first launch, so a missing C compiler or
  missing Python headers make the kernel unavailable on CUDA (`host_toolchain_problem`), "auto"
  falls back saying why and "triton" refuses before anything runs;
- tools/bench/distill_bench.py checks the kernel in the dtype the engine trains the student in.
No test here needs a GPU or Triton's interpreter (TRITON_INTERPRET must be unset: the tiles differ).
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys

import pytest
import torch
from helpers import REPO

from distill import kernel_check

QKV = {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}
HAVE_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed (pip install triton)")
compiled_kernels = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                                      reason="TRITON_INTERPRET is set in this process: the GPU tiles are not in use")
CUDA_X, CUDA_YZ = 2**31 - 1, 65535


def _load_tool(name: str):
    path = REPO / "tools" / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- launch limits
def _within_cuda_limits(grid) -> bool:
    grid = tuple(grid) + (1,) * (3 - len(grid))
    return len(grid) == 3 and 1 <= grid[0] <= CUDA_X and all(1 <= g <= CUDA_YZ for g in grid[1:])


@needs_triton
@compiled_kernels
def test_the_launch_grid_stays_within_cudas_limits():
    from distill.kernels.relation_kl import launch_grid

    for batch_heads in (1, 48, 65535, 65536, 1366 * 48, 2**17, 2**20):
        for seq in (1, 16, 144, 511, 512, 8192, 2**16 + 1, 2**20, 2**21):
            for block in (16, 32, 64, 128):
                programs = batch_heads * math.ceil(seq / block)
                if batch_heads * seq >= 2**31 and programs > CUDA_X:
                    with pytest.raises(ValueError, match="CUDA's grid limit.*split the batch"):
                        launch_grid(batch_heads, seq, block)
                    continue
                grid = launch_grid(batch_heads, seq, block)
                assert _within_cuda_limits(grid), (batch_heads, seq, block, grid)
                assert math.prod(grid) == programs       # one program per (b, h) pair and block of positions
    # B * A_r * S < 2**31 holds for every input the 32-bit offsets accept: their grid always fits
    assert _within_cuda_limits(launch_grid(2**20, 2**31 // 2**20 - 1, 16))


class _RecordingKernel:
    """Stands in for a @triton.jit kernel: records the grid of each launch."""

    def __init__(self):
        self.grids = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.grids.append((tuple(grid), kwargs["BLOCK_M"], kwargs["BLOCK_N"]))
        return launch


@needs_triton
@compiled_kernels
def test_both_launches_fit_cuda_for_more_than_65535_batch_heads(monkeypatch):
    """B = 1400 examples x A_r = 48 heads = 67,200 (b, h) pairs: more than a y or z grid axis takes."""
    from distill.kernels import relation_kl as rk

    forward, backward = _RecordingKernel(), _RecordingKernel()
    monkeypatch.setattr(rk, "_relation_kl_fwd", forward)
    monkeypatch.setattr(rk, "_relation_kl_bwd", backward)
    batch, seq, heads = 1400, 144, 48
    teacher = [torch.empty(batch, seq, 768, device="meta") for _ in range(2)]
    student = [torch.empty(batch, seq, 384, device="meta") for _ in range(2)]
    bias = torch.empty(batch, seq, device="meta")
    kl, lse_t, lse_s = rk.relation_kl_forward(*teacher, *student, bias, heads)
    grad = torch.empty(batch, seq, 384, device="meta")
    rk.relation_kl_backward(*teacher, *student, bias, bias, lse_t, lse_s, grad, grad, heads)
    (f_grid, f_m, _), = forward.grids
    (b_grid, _, b_n), = backward.grids
    for grid, block in ((f_grid, f_m), (b_grid, b_n)):
        assert _within_cuda_limits(grid), grid
        assert grid == rk.launch_grid(batch * heads, seq, block)


# --------------------------------------------------------------------------- tiles and the self-check's S
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
HEAD_DIMS = (1, 4, 8, 12, 16, 21, 32, 48, 64, 96, 128, 256)


@needs_triton
@compiled_kernels
def test_the_self_check_spans_several_of_the_largest_gpu_tiles():
    from distill.kernel_check import check_seq
    from distill.kernels import DOT_PRECISIONS
    from distill.kernels import relation_kl as rk

    seq = check_seq(interpreted=False)
    largest = 0
    for kernel in ("forward", "backward"):
        for dtype in DTYPES:
            for head_dim in HEAD_DIMS:
                for precision in DOT_PRECISIONS:
                    blocks = rk.gpu_blocks(kernel, dtype, head_dim, precision)
                    assert blocks == rk.default_blocks(kernel, dtype, head_dim, precision, interpreted=False)
                    block_m, block_n, warps, stages = blocks
                    assert all(b >= 16 and b & (b - 1) == 0 for b in (block_m, block_n)), blocks
                    largest = max(largest, block_m, block_n)
    assert seq > 2 * largest, (seq, largest)     # every program walks three or more blocks
    assert seq % 16 == 0                          # specialized as training shapes are
    assert check_seq() == seq                     # this process runs the compiled kernels' tiles
    # the interpreter's tiles are 16: its S stays small (each tile operation is a numpy call there)
    assert check_seq(interpreted=True) > 2 * max(rk.default_blocks("backward", interpreted=True)[:2])
    assert check_seq(interpreted=True) <= 64


def _spill_rows(cases):
    """kernel_spills.py's rows for (kernel, dtype, precision, A_r, sm) at 768 -> 384, each at the default tiles,
    and that tool (its `fits`: no spill, at most 240 registers, shared memory within the target's limit)."""
    from distill.kernels.relation_kl import gpu_blocks

    tool = _load_tool("kernel_spills")
    rows = []
    for kernel, dtype, precision, heads, capability in cases:
        shape = tool.Shape(32, 512, heads, 768, 384)
        blocks = gpu_blocks(kernel, tool.dtype_of(dtype), max(shape.head_dims), precision)
        rows.append(tool.compile_one(kernel, dtype, precision, blocks, shape, capability))
    return rows, tool


def _aot_available() -> bool:
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError:
        return False
    return True


needs_aot = pytest.mark.skipif(not (HAVE_TRITON and _aot_available()),
                               reason="triton's ahead-of-time compiler (ASTSource, GPUTarget, ptxas) is not here")


@needs_aot
@compiled_kernels
def test_the_float32_backward_does_not_spill_at_its_default_tiles():
    """Compiled for sm_90 (H100) and sm_86 by the wheel's ptxas, no GPU: BERT-base 768 -> 384 at the default
    A_r = 48 (head dims 16 / 8) and at A_r = 12 (64 / 32), where the former 32 x 64 / 4 / 2 tiles spilled
    kilobytes per thread."""
    rows, tool = _spill_rows([("backward", "float32", "ieee", 48, 90), ("backward", "float32", "ieee", 48, 86),
                              ("backward", "float32", "ieee", 12, 90)])
    for row in rows:
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row
        assert tool.fits(row), row


@pytest.mark.slow
@needs_aot
@compiled_kernels
def test_no_default_tiles_spill_on_ampere_or_hopper():
    """Both kernels; float32 inputs ("ieee" and "tf32x3") and bfloat16 inputs; A_r = 48 and 12; sm_80, sm_86,
    sm_90 (tools/bench/results/kernel_spills.md has every dtype, precision and A_r = 48, 24, 12, 6, 3)."""
    cases = [(kernel, dtype, precision, heads, capability)
             for kernel in ("forward", "backward")
             for dtype, precision in (("float32", "ieee"), ("float32", "tf32x3"), ("bfloat16", "ieee"))
             for heads in (48, 12) for capability in (80, 86, 90)]
    rows, tool = _spill_rows(cases)
    assert not [row for row in rows if not tool.fits(row)]


def test_ptxas_reports_are_read():
    tool = _load_tool("kernel_spills")
    log = ("ptxas info    : Compiling entry function '_relation_kl_bwd' for 'sm_90a'\n"
           "ptxas info    : Function properties for _relation_kl_bwd\n"
           "    16 bytes stack frame, 40 bytes spill stores, 24 bytes spill loads\n"
           "ptxas info    : Used 128 registers, used 1 barriers, 528 bytes cmem[0]\n")
    assert tool.parse_ptxas(log) == dict(registers=128, spill_stores=40, spill_loads=24, stack_frame=16)
    row = dict(spill_stores=0, spill_loads=0, registers=200, shared=90_000, shared_limit=101_376)
    assert tool.fits(row)
    assert not tool.fits({**row, "spill_loads": 4}) and not tool.fits({**row, "registers": 250})
    assert tool.verdict({**row, "shared": 120_000}) == "over the shared memory limit"
    with pytest.raises(ValueError, match="no register report"):
        tool.parse_ptxas("ptxas fatal : Unresolved extern function")


# --------------------------------------------------------------------------- the host toolchain
@pytest.fixture
def python_h(tmp_path, monkeypatch):
    """Python's include directory: a temporary one holding Python.h (remove it to simulate no headers)."""
    import sysconfig

    (tmp_path / "Python.h").write_text("/* */\n")
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"include": str(tmp_path)})
    return tmp_path / "Python.h"


def _which(present):
    return lambda name, *a, **k: f"/usr/bin/{name}" if name in present else None


def test_the_toolchain_is_complete_with_a_compiler_and_headers(monkeypatch, python_h):
    import shutil

    from distill.kernels import host_toolchain_problem

    monkeypatch.delenv("CC", raising=False)
    for present in ({"gcc"}, {"clang"}, {"gcc", "clang", "cc"}):
        monkeypatch.setattr(shutil, "which", _which(present))
        assert host_toolchain_problem() is None, present


def test_a_missing_c_compiler_is_named_with_what_to_install(monkeypatch, python_h):
    import shutil

    from distill.kernels import host_toolchain_problem

    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", _which({"cc"}))       # Triton looks for gcc and clang, not cc
    problem = host_toolchain_problem()
    assert problem is not None and "no C compiler" in problem
    assert "gcc" in problem and "clang" in problem and "apt install gcc" in problem and "build-essential" in problem
    monkeypatch.setenv("CC", "/opt/missing/cc")                # CC, when set, is what Triton runs
    monkeypatch.setattr(shutil, "which", _which({"gcc"}))
    problem = host_toolchain_problem()
    assert problem is not None and "CC='/opt/missing/cc' is not found" in problem


def test_missing_python_headers_are_named_with_what_to_install(monkeypatch, python_h):
    import shutil

    from distill.kernels import host_toolchain_problem

    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", _which({"gcc"}))
    python_h.unlink()
    problem = host_toolchain_problem()
    assert problem is not None and "Python.h" in problem and str(python_h.parent) in problem
    assert "apt install python3-dev" in problem and f"python{sys.version_info.major}.{sys.version_info.minor}-dev" \
        in problem
    monkeypatch.setattr(shutil, "which", _which(set()))       # both missing: both named
    problem = host_toolchain_problem()
    assert "no C compiler" in problem and "Python.h" in problem


@pytest.fixture
def cuda_without_compiler(monkeypatch, python_h):
    """A CUDA machine (as torch reports it) whose host has no C compiler; the interpreter off."""
    import shutil

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(shutil, "which", _which(set()))


@needs_triton
def test_the_kernel_is_unavailable_on_cuda_without_a_compiler(cuda_without_compiler, monkeypatch):
    from distill import kernels

    reason = kernels.unavailable_reason("cuda")
    assert reason is not None and "no C compiler" in reason and "apt install gcc" in reason
    assert not kernels.available("cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "1")      # the interpreter builds nothing: it needs no compiler
    assert kernels.unavailable_reason("cpu") is None


@needs_triton
def test_auto_falls_back_saying_why_and_triton_refuses_without_a_compiler(cuda_without_compiler, monkeypatch):
    from distill.relations import RelationSpec

    def no_check(*args, **kwargs):
        raise AssertionError("no self-check runs where the kernel cannot run")

    monkeypatch.setattr(kernel_check, "self_check", no_check)
    spec, check = kernel_check.settle_relation_spec(RelationSpec(4, QKV, "auto"), "cuda", widths=(32, 16))
    assert spec.impl == "chunked"
    assert check is not None and not check.ran and check.fallback and not check.ok
    assert check.line().startswith("relation kernel not used on cuda: Triton builds a C launcher")
    assert "no C compiler" in check.line()
    assert check.line().endswith("training with the chunked loss instead (relation_impl=auto)")
    with pytest.raises(ValueError, match="relation_impl=triton cannot run here: .*no C compiler.*apt install gcc"):
        kernel_check.settle_relation_spec(RelationSpec(4, QKV, "triton"), "cuda", widths=(32, 16))
    # on CPU, auto never meant the kernel: no line
    assert kernel_check.settle_relation_spec(RelationSpec(4, QKV, "auto"), "cpu", widths=(32, 16)) == \
        (RelationSpec(4, QKV, "chunked"), None)


# --------------------------------------------------------------------------- distill_bench's check
def test_distill_bench_checks_the_kernel_in_the_engines_student_dtype(monkeypatch):
    """The engine trains a bf16 (fp16) student: the self-check must run in that dtype, not float32."""
    import dataclasses

    from test_objective import tiny_teacher

    from distill.relations import RelationSpec
    from distill.student import create_student

    bench = _load_tool("distill_bench")
    seen = []

    def settle(spec, device, *, widths, dtype, teacher_dtype):
        seen.append(dtype)
        return dataclasses.replace(spec, impl="chunked"), None

    monkeypatch.setattr(kernel_check, "settle_relation_spec", settle)
    teacher = tiny_teacher()
    student = create_student(teacher, 2, 16, 2, init="random")
    spec = RelationSpec(4, QKV, "auto", 5)
    for precision, want in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        objective = bench.build_objective(teacher, student, spec, torch.device("cpu"), precision)
        objective.remove()
        assert seen[-1] == want, (precision, seen)
