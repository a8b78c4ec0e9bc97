"""The fused Triton relation KL (distill.kernels) against float64 references.

On CPU the kernels run in Triton's interpreter, which must be switched on (TRITON_INTERPRET=1)
before triton is imported: the interpreter cases therefore run in one child process started with
that variable (this file as a script), so that no other test module of the pytest process sees an
interpreted triton, and each case is reported as its own test. On a CUDA machine the `gpu` tests
run the compiled kernels on the issue's shapes. Everything skips where triton is not installed.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, cpu_env

from distill.errors import ConfigError
from distill.kernels import DOT_PRECISIONS
from distill.relations import relation_loss, relation_name

HAVE_TRITON = importlib.util.find_spec("triton") is not None
if __name__ != "__main__" and not HAVE_TRITON:
    pytest.skip("triton is not installed (pip install triton)", allow_module_level=True)

QKV = {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}
MIXED = {(1, 1): 1.0, (1, 2): 0.5, (2, 3): 2.0, (3, 3): 0.25}
RELATIONS = {"qkv": QKV, "mixed": MIXED}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOLERANCE = 1e-4                 # relative error of loss and gradients, float32 inputs
# half-precision inputs: the loss is float32 as ever, but the gradients are rounded to the input dtype
GRAD_TOLERANCE = {"float32": 1e-4, "float16": 2e-3, "bfloat16": 1.6e-2}

# the interpreter cases: B = 2 throughout; widths teacher 32 / student 16
INTERPRETER_CASES = {
    "s16-a2-mixed-random-mask": dict(seq=16, heads=2, relations="mixed", mask="random"),
    "s33-a4-mixed-random-mask": dict(seq=33, heads=4, relations="mixed", mask="random", seed=1),
    "s33-a2-qkv-right-padded": dict(seq=33, heads=2, relations="qkv", mask="right"),
    "s33-a4-qkv-one-example-all-padding": dict(seq=33, heads=4, relations="qkv", mask="one-empty", seed=2),
    "s16-a4-mixed-fused-qkv-strides": dict(seq=16, heads=4, relations="mixed", mask="random", fused=True, seed=3),
    "s33-a2-mixed-float16": dict(seq=33, heads=2, relations="mixed", mask="random", dtype="float16", seed=4),
    "s16-a4-qkv-bfloat16-student-float32-teacher": dict(seq=16, heads=4, relations="qkv", mask="right",
                                                        dtype="bfloat16", teacher_dtype="float32", seed=5),
    "s33-a4-qk-only-query-needs-grad": dict(seq=33, heads=4, relations={(1, 2): 1.0}, mask="random",
                                             grad=(True, False, False), seed=6),
    # unequal tiles, different in forward and backward (as the GPU defaults are, e.g. 64 x 32, then 16 x 64)
    "s33-a2-mixed-asymmetric-tiles": dict(seq=33, heads=2, relations="mixed", mask="random", seed=7,
                                          blocks=((32, 16, 1, 1), (16, 32, 1, 1))),
}


# --------------------------------------------------------------------------- shared helpers
def make_case(seq, heads, *, relations="mixed", mask="random", batch=2, t_width=32, s_width=16, seed=0,
              dtype="float32", teacher_dtype=None, fused=False, grad=(True, True, True), device="cpu", **_):
    """Random teacher / student (q, k, v) [B, S, H] in the given dtypes and a [B, S] 0/1 mask."""
    gen = torch.Generator().manual_seed(seed)
    s_dtype = DTYPES[dtype]
    t_dtype = DTYPES[teacher_dtype or dtype]
    if fused:      # q, k, v as column slices of one [B, S, 3H] tensor, as a fused projection gives them
        t_all = torch.randn(batch, seq, 3 * t_width, generator=gen).to(device, t_dtype)
        s_all = torch.randn(batch, seq, 3 * s_width, generator=gen).to(device, s_dtype).requires_grad_()
        teacher = tuple(t_all[..., i * t_width:(i + 1) * t_width] for i in range(3))
        student = tuple(s_all[..., i * s_width:(i + 1) * s_width] for i in range(3))
        for x in student:
            x.retain_grad()
    else:
        teacher = tuple(torch.randn(batch, seq, t_width, generator=gen).to(device, t_dtype) for _ in range(3))
        student = tuple(torch.randn(batch, seq, s_width, generator=gen).to(device, s_dtype).requires_grad_(g)
                        for g in grad)
    if mask == "random":        # padding anywhere in the row, at least one real token per example
        keep = torch.rand(batch, seq, generator=gen) < 0.7
        keep[:, int(torch.randint(seq, (1,), generator=gen))] = True
    elif mask == "right":
        lengths = torch.randint(1, seq + 1, (batch,), generator=gen)
        lengths[0] = seq
        keep = torch.arange(seq)[None, :] < lengths[:, None]
    elif mask == "one-empty":
        keep = torch.rand(batch, seq, generator=gen) < 0.6
        keep[0] = False
        keep[1, 0] = True
    else:
        raise ValueError(mask)
    return teacher, student, keep.long().to(device)


def reference64(teacher, student, mask, heads, relations):
    """docs/design.md's definition in float64 with true -inf masking; returns (total, {name: part})."""
    batch = mask.shape[0]
    valid = mask.bool()
    lengths = valid.sum(1).double().clamp(min=1)
    total = torch.zeros((), dtype=torch.float64, device=mask.device)
    parts = {}
    for (m, n), weight in relations.items():
        def log_probs(x_m, x_n):
            b, s, h = x_m.shape
            q = x_m.double().reshape(b, s, heads, h // heads).transpose(1, 2)
            k = x_n.double().reshape(b, s, heads, h // heads).transpose(1, 2)
            z = q @ k.transpose(-1, -2) / math.sqrt(h // heads)
            # an all-padding row keeps finite logits (it is weighted out below), like the -1e30 of the loss
            z = z.masked_fill(~valid[:, None, None, :] & valid.any(1)[:, None, None, None], -math.inf)
            return torch.log_softmax(z, dim=-1)
        log_t = log_probs(teacher[m - 1], teacher[n - 1]).detach()
        log_s = log_probs(student[m - 1], student[n - 1])
        kl = torch.where(valid[:, None, None, :], log_t.exp() * (log_t - log_s), 0.0).sum(-1)   # (B, A, S)
        per_example = (kl * valid[:, None, :]).sum((1, 2)) / (heads * lengths)
        part = per_example.sum() / batch
        parts[relation_name((m, n))] = part.detach()
        total = total + weight * part
    return total, parts


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (0 when both vanish)."""
    got, want = got.detach().double(), want.detach().double()
    scale = want.abs().max().item()
    diff = (got - want).abs().max().item()
    return diff / scale if scale > 0 else diff


def compare(case: dict, *, precision: str = "ieee", device="cpu") -> dict:
    """Loss, parts and student gradients of the Triton loss against the float64 definition and
    against distill.relations.relation_loss(chunk_size=None) on the same inputs."""
    from distill.kernels import relation_loss_triton

    relations = RELATIONS.get(case["relations"], case["relations"]) if isinstance(case["relations"], str) \
        else case["relations"]
    teacher, student, mask = make_case(device=device, **case)
    heads = case["heads"]
    leaves = [x for x in student if x.requires_grad]

    def grads_of(total):
        for x in student:
            x.grad = None
        total.backward()
        return [None if x.grad is None else x.grad.clone() for x in student]

    start = time.perf_counter()
    total, parts = relation_loss_triton(teacher, student, mask, num_relation_heads=heads, relations=relations,
                                        precision=precision, blocks=case.get("blocks"))
    got_grads = grads_of(total)
    seconds = time.perf_counter() - start

    student64 = tuple(x.detach().double().requires_grad_(x.requires_grad) for x in student)
    ref_total, ref_parts = reference64(teacher, student64, mask, heads, relations)
    ref_total.backward()
    ref_grads = [x.grad for x in student64]

    torch_total, torch_parts = relation_loss(teacher, student, mask, num_relation_heads=heads, relations=relations)
    torch_grads = grads_of(torch_total)

    result = {
        "seconds": seconds,
        "loss": total.item(), "loss64": ref_total.item(),
        "loss_err": rel_err(total, ref_total),
        "loss_err_vs_relation_loss": rel_err(total, torch_total),
        "part_err": max(rel_err(parts[k], ref_parts[k]) for k in ref_parts),
        "same_parts": sorted(parts) == sorted(torch_parts),
        "finite": bool(torch.isfinite(total).item()),
        "grad_err": [], "grad_err_vs_relation_loss": [], "grad_dtype_ok": True, "grad_presence_ok": True,
    }
    for got, want, ours, x in zip(got_grads, ref_grads, torch_grads, student, strict=True):
        if (got is None) != (want is None) or (got is None) != (ours is None):
            result["grad_presence_ok"] = False
            continue
        if got is None:
            continue
        result["grad_dtype_ok"] &= got.dtype == x.dtype
        result["finite"] &= bool(torch.isfinite(got).all().item())
        result["grad_err"].append(rel_err(got, want))
        result["grad_err_vs_relation_loss"].append(rel_err(got, ours))
    result["leaves"] = len(leaves)
    return result


def check(result: dict, dtype: str = "float32") -> None:
    assert result["finite"], result
    assert result["same_parts"], result
    assert result["grad_presence_ok"] and result["grad_dtype_ok"], result
    assert result["loss_err"] < TOLERANCE, result
    assert result["part_err"] < TOLERANCE, result
    assert result["loss_err_vs_relation_loss"] < TOLERANCE, result
    assert result["grad_err"], result
    assert max(result["grad_err"]) < GRAD_TOLERANCE[dtype], result
    assert max(result["grad_err_vs_relation_loss"]) < GRAD_TOLERANCE[dtype], result


# --------------------------------------------------------------------------- CPU: the interpreter
@pytest.fixture(scope="module")
def interpreter_results():
    """Run every interpreter case once, in a child process with TRITON_INTERPRET=1."""
    env = cpu_env(TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve())], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, (
        f"interpreter run failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


@pytest.mark.parametrize("name", sorted(INTERPRETER_CASES))
def test_interpreter_matches_float64_reference(interpreter_results, name):
    result = interpreter_results[name]
    assert "error" not in result, result.get("error")
    check(result, INTERPRETER_CASES[name].get("dtype", "float32"))


def _run_interpreter_cases() -> dict:
    torch.set_num_threads(1)
    results = {}
    for name, case in INTERPRETER_CASES.items():
        try:
            results[name] = compare(case)
        except Exception as exc:       # reported per case by the parent's test
            import traceback
            results[name] = {"error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"}
    return results


# --------------------------------------------------------------------------- CPU: no interpreter
needs_plain_process = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                                         reason="TRITON_INTERPRET is set in this process")


@needs_plain_process
def test_available_and_clear_refusal_on_cpu_without_interpreter():
    from distill.kernels import available, relation_loss_triton, unavailable_reason

    assert not available("cpu")
    assert "TRITON_INTERPRET" in unavailable_reason("cpu")
    assert available() == torch.cuda.is_available()
    teacher, student, mask = make_case(16, 2)
    with pytest.raises(ConfigError, match="relation_loss_triton cannot run.*distill.relations.relation_loss"):
        relation_loss_triton(teacher, student, mask, num_relation_heads=2, relations=QKV)


def test_validation_is_relation_loss_validation():
    from distill.kernels import relation_loss_triton

    teacher, student, mask = make_case(16, 2)
    with pytest.raises(ValueError, match="num_relation_heads=3 does not divide"):
        relation_loss_triton(teacher, student, mask, num_relation_heads=3, relations=QKV)
    with pytest.raises(ValueError, match="'qx' names no relation"):  # the text form is parsed as relation_loss does
        relation_loss_triton(teacher, student, mask, num_relation_heads=2, relations="qx:1")
    with pytest.raises(ValueError, match="precision='fast': choose one of " + ", ".join(DOT_PRECISIONS)):
        relation_loss_triton(teacher, student, mask, num_relation_heads=2, relations=QKV, precision="fast")


def test_block_configurations_are_validated():
    """split_blocks only parses; it runs no kernel, so it needs no GPU or interpreter."""
    from distill.kernels.relation_kl import split_blocks

    assert split_blocks(None) == (None, None)
    assert split_blocks((64, 64, 4, 2)) == ((64, 64, 4, 2), (64, 64, 4, 2))
    assert split_blocks(((64, 64, 4, 2), None)) == ((64, 64, 4, 2), None)
    for bad in ((48, 64, 4, 2), (64, 64, 4), ((64, 64, 4, 2), (8, 64, 4, 2)), (64, 64, 0, 2)):
        with pytest.raises(ValueError, match="blocks"):
            split_blocks(bad)


@needs_plain_process
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
@pytest.mark.parametrize("dtype, precision", [("fp32", "ieee"), ("fp32", "tf32x3"), ("bf16", "ieee")])
def test_kernels_compile_for_hopper_without_a_gpu(dtype, precision):
    """The interpreter runs numpy, not the compiler: lower both kernels, at the default GPU tiles
    and the benchmark's head sizes (d_t = 16, d_s = 8), through Triton's whole pipeline to a cubin
    for sm_90 (H100 / H200), which needs no GPU. Catches what only the compiler rejects."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:       # an API of this triton version that the test does not know
        pytest.skip(f"triton's ahead-of-time API is not importable: {exc}")
    from distill.kernels import relation_kl as rk

    for name, kernel in (("forward", rk._relation_kl_fwd), ("backward", rk._relation_kl_bwd)):
        inputs = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        block_m, block_n, warps, stages = rk.default_blocks(name, inputs, 16, precision)
        signature = {}
        for arg in kernel.arg_names:
            if arg in ("TM", "TN", "SM", "SN"):
                signature[arg] = "*" + dtype
            elif arg.isupper():
                signature[arg] = "*fp32"
            elif arg.startswith("stride") or arg in ("seq", "num_heads", "d_t", "d_s"):
                signature[arg] = "i32"
            elif arg in ("scale_t", "scale_s", "grad_scale"):
                signature[arg] = "fp32"
            else:
                signature[arg] = "constexpr"
        dot = "tf32" if dtype == "bf16" else precision
        constants = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DT=rk._head_block(16), BLOCK_DS=rk._head_block(8),
                         PREC_T=dot, PREC_S=dot)
        if name == "backward":
            constants["PREC_G"] = precision
        compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=warps, num_stages=stages))
        ptx = compiled.asm["ptx"]
        assert compiled.asm.get("cubin"), name
        assert "ex2.approx" in ptx, name
        if name == "backward":
            assert "red." in ptx or "atom." in ptx, name
        if dot != "ieee":
            assert "mma" in ptx, (name, dtype, precision)      # tensor cores for TF32 products


# --------------------------------------------------------------------------- GPU: the compiled kernels
# the shapes: S in 64, 128, 511, 512; A_r in 12, 48, 64; widths 256 to 1024; random padding
GPU_CASES = {
    "s64-a12-768-384": dict(seq=64, heads=12, t_width=768, s_width=384, relations="mixed", mask="random"),
    "s128-a48-768-384": dict(seq=128, heads=48, t_width=768, s_width=384, relations="qkv", mask="right", seed=1),
    "s511-a64-1024-256": dict(seq=511, heads=64, t_width=1024, s_width=256, relations="mixed", mask="random", seed=2),
    "s512-a48-768-384": dict(seq=512, heads=48, t_width=768, s_width=384, relations="qkv", mask="right", seed=3),
    "s512-a64-512-256-one-empty": dict(seq=512, heads=64, t_width=512, s_width=256, relations="qkv",
                                       mask="one-empty", seed=4),
    "s512-a12-1020-384": dict(seq=512, heads=12, t_width=1020, s_width=384, relations="mixed", mask="random", seed=5),
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(GPU_CASES))
@pytest.mark.parametrize("precision", ["ieee", "tf32x3"])
def test_gpu_matches_float64_reference(name, precision):
    check(compare(GPU_CASES[name], precision=precision, device="cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_gpu_half_inputs(dtype):
    case = dict(seq=512, heads=48, t_width=768, s_width=384, relations="qkv", mask="random", dtype=dtype, seed=7)
    check(compare(case, device="cuda"), dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_never_allocates_a_relation_matrix():
    """Peak memory of forward + backward stays far below one [B, A, S, S] float32 matrix."""
    from distill.kernels import relation_loss_triton

    teacher, student, mask = make_case(512, 48, t_width=768, s_width=384, batch=8, mask="right", device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    total, _ = relation_loss_triton(teacher, student, mask, num_relation_heads=48, relations=QKV)
    total.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    one_matrix = 8 * 48 * 512 * 512 * 4
    assert extra < one_matrix / 8, (extra, one_matrix)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_gpu_self_check_passes_well_under_a_second(dtype):
    """The check a run does before it trains with the kernel (distill.kernel_check.self_check), on the
    issue's shapes: it passes, and once the kernels are compiled it takes well under a second."""
    from distill.kernel_check import self_check
    from distill.relations import RelationSpec

    spec = RelationSpec(48, QKV, "triton")
    first = self_check(spec, (768, 384), "cuda", DTYPES[dtype], torch.float16)      # compiles the kernels
    assert first.ok, first.line()
    again = self_check(spec, (768, 384), "cuda", DTYPES[dtype], torch.float16)
    assert again.ok and again.seconds < 0.5, again.line()


if __name__ == "__main__":          # the child process of `interpreter_results`
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        sys.exit("run through pytest, or with TRITON_INTERPRET=1: the interpreter must be on before triton loads")
    print(json.dumps(_run_interpreter_cases()))
