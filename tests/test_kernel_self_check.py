"""The fused relation kernel proves itself before a run uses it (distill.kernel_check).

The kernels run on CPU only in Triton's interpreter, which must be on (TRITON_INTERPRET=1) before
triton is imported: the cases run in one child process started with it (this file as a script),
each reported as its own test. A broken kernel is simulated by replacing
distill.kernels.relation_loss_triton (a wrong loss, wrong gradients, an exception); "auto on CUDA"
by making distill.relations.resolve_relation_impl pick triton for auto on CPU.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, cpu_env
from test_distill_run import tiny  # noqa: F401  (the fixture: a tiny teacher and shards)

from distill import kernel_check
from distill.kernel_check import check_seq

if __name__ != "__main__" and importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton)", allow_module_level=True)

QKV = {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}
INTERPRETER_ENV = cpu_env(TRITON_INTERPRET="1", OMP_NUM_THREADS="1",
                          PYTHONPATH=os.pathsep.join([str(REPO)] + ([os.environ["PYTHONPATH"]]
                                                                    if os.environ.get("PYTHONPATH") else [])))


# --------------------------------------------------------------------------- the child's cases
def _broken_kernels() -> dict:
    from distill import kernels

    real = kernels.relation_loss_triton

    def wrong_loss(*args, **kwargs):
        total, parts = real(*args, **kwargs)
        return total * 1.01, parts

    def wrong_grads(*args, **kwargs):          # the right value, gradients 1.5 times too large
        total, parts = real(*args, **kwargs)
        return total.detach() + (total - total.detach()) * 1.5, parts

    def raising(*args, **kwargs):
        raise RuntimeError("PTX compilation failed: out of shared memory\n(more lines)")

    def not_finite(*args, **kwargs):
        total, parts = real(*args, **kwargs)
        return total * float("nan"), parts

    return {"good": real, "wrong_loss": wrong_loss, "wrong_grads": wrong_grads, "raising": raising,
            "not_finite": not_finite}


def _as_dict(result) -> dict:
    import dataclasses

    out = dataclasses.asdict(result)
    out["line"] = result.line()
    return out


def _self_check_cases() -> dict:
    from distill import kernels
    from distill.relations import RelationSpec

    broken = _broken_kernels()
    spec = RelationSpec(4, QKV, "triton")
    mixed = RelationSpec(2, {(1, 2): 1.0, (3, 3): 0.5}, "triton")
    results = {}
    rng_before = torch.get_rng_state()
    results["good-float32"] = _as_dict(kernel_check.self_check(spec, (32, 16), "cpu"))
    results["rng_untouched"] = bool(torch.equal(rng_before, torch.get_rng_state()))
    results["good-bfloat16-student-float16-teacher-mixed"] = _as_dict(
        kernel_check.self_check(mixed, (32, 16), "cpu", torch.bfloat16, torch.float16))
    for name in ("wrong_loss", "wrong_grads", "raising", "not_finite"):
        kernels.relation_loss_triton = broken[name]
        try:
            results[name] = _as_dict(kernel_check.self_check(spec, (32, 16), "cpu"))
        finally:
            kernels.relation_loss_triton = broken["good"]
    results["inputs"] = _check_inputs_case(spec)
    return results


def _check_inputs_case(spec) -> dict:
    """The check's inputs in the interpreter: S, and where its padding lies."""
    from distill.kernel_check import _check_inputs, check_seq
    from distill.kernels.relation_kl import default_blocks

    seq = check_seq()
    teacher, student, mask = _check_inputs(spec, (32, 16), torch.device("cpu"), torch.float32, torch.float32, seq)
    return {"seq": seq, "shapes": [list(x.shape) for x in (*teacher, *student)],
            "padded": [[i for i, v in enumerate(row.tolist()) if v == 0] for row in mask],
            "blocks": [list(default_blocks(kernel)) for kernel in ("forward", "backward")]}


def _objective(impl: str):
    from test_objective import tiny_teacher

    from distill.objective import MiniLMv2Objective
    from distill.student import create_student

    teacher = tiny_teacher()
    student = create_student(teacher, 2, 16, 2, init="random").eval()
    return MiniLMv2Objective(teacher, student, num_relation_heads=4, relations=QKV, chunk_size=5,
                             relation_impl=impl)


def _objective_cases() -> dict:
    """MiniLMv2Objective through distill.kernel_check.settle_relation_spec, with auto resolving to triton on CPU."""
    from test_objective import make_batch

    import distill.relations as relations
    from distill import kernels

    real_resolve = relations.resolve_relation_impl
    relations.resolve_relation_impl = lambda impl, device: "triton" if impl == "auto" else real_resolve(impl, device)
    broken = _broken_kernels()
    results = {}
    objective = _objective("auto")
    results["auto-good"] = {"impl": objective.relation_impl, "check": _as_dict(objective.kernel_check)}
    chunked_loss = float(_objective("chunked")(make_batch())[0])
    kernels.relation_loss_triton = broken["wrong_loss"]
    try:
        objective = _objective("auto")
        loss = float(objective(make_batch())[0])
        results["auto-broken"] = {"impl": objective.relation_impl, "check": _as_dict(objective.kernel_check),
                                  "loss": loss, "chunked_loss": chunked_loss}
        kernels.relation_loss_triton = broken["raising"]
        try:
            _objective("triton")
            results["triton-broken"] = {"raised": None}
        except ValueError as exc:
            results["triton-broken"] = {"raised": str(exc)}
    finally:
        kernels.relation_loss_triton = broken["good"]
        relations.resolve_relation_impl = real_resolve
    results["chunked-no-check"] = {"check": _objective("chunked").kernel_check}
    return results


# --------------------------------------------------------------------------- the parent's tests
@pytest.fixture(scope="module")
def child():
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve())], cwd=REPO / "tests", env=INTERPRETER_ENV,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("name, dtype_tolerance", [("good-float32", 1e-4),
                                                   ("good-bfloat16-student-float16-teacher-mixed", 1.6e-2)])
def test_a_correct_kernel_passes_within_the_stated_tolerance(child, name, dtype_tolerance):
    r = child["self_check"][name]
    assert r["ok"] and r["reason"] == "", r
    assert r["loss_tolerance"] == 1e-4 and r["grad_tolerance"] == dtype_tolerance
    assert r["loss_err"] <= 1e-4 and r["grad_err"] <= dtype_tolerance
    assert 0 < r["seconds"] < 60
    assert r["line"].startswith("relation kernel self-check passed on cpu in ")
    assert f"(tolerance {dtype_tolerance:g})" in r["line"] and "(tolerance 0.0001)" in r["line"]
    assert "training with the fused Triton kernels" in r["line"]
    assert f"B=2, S={check_seq(interpreted=True)} with padding, A_r=" in r["shape"]


def test_the_check_walks_several_tiles_with_padding_inside_and_at_the_end(child):
    """In the interpreter (16-wide tiles) S = 48; on a GPU S spans the GPU's tiles the same way
    (tests/test_kernel_launch.py). Padding: a key inside the first example, the second example's last
    rows: the last block of every tile size holds padding only."""
    r = child["self_check"]["inputs"]
    seq = r["seq"]
    assert seq == check_seq(interpreted=True) and seq % 16 == 0
    assert all(shape[:2] == [2, seq] for shape in r["shapes"])
    assert r["padded"][0] == [5]
    assert r["padded"][1] == list(range(seq - 25, seq))
    for block_m, block_n, _, _ in r["blocks"]:
        assert seq > 2 * max(block_m, block_n)          # three or more blocks of keys and of queries
        for block in (block_m, block_n):
            assert (seq - 1) // block * block >= seq - 25  # the last block: padding only


def test_the_check_leaves_the_runs_random_state_alone(child):
    assert child["self_check"]["rng_untouched"]


@pytest.mark.parametrize("name, reason", [
    ("wrong_loss", "the kernel's loss"),
    ("wrong_grads", "the kernel's student gradients differ from the chunked loss's beyond the tolerance"),
    ("raising", "RuntimeError: PTX compilation failed: out of shared memory"),
    ("not_finite", "the kernel's loss or gradients are not finite"),
])
def test_a_broken_kernel_fails_the_check_and_says_why(child, name, reason):
    r = child["self_check"][name]
    assert not r["ok"], r
    assert r["reason"].startswith(reason), r["reason"]
    assert "(more lines)" not in r["reason"]
    assert r["line"].startswith("relation kernel self-check FAILED on cpu") and r["line"].endswith(r["reason"])
    if name == "wrong_grads":
        assert r["loss_err"] <= 1e-4 < r["grad_err"]


def test_auto_uses_a_kernel_that_passes(child):
    r = child["objective"]["auto-good"]
    assert r["impl"] == "triton" and r["check"]["ok"]


def test_auto_falls_back_to_the_chunked_loss_when_the_kernel_fails(child):
    r = child["objective"]["auto-broken"]
    assert r["impl"] == "chunked"
    assert not r["check"]["ok"] and r["check"]["fallback"]
    assert r["check"]["line"].endswith("training with the chunked loss instead (relation_impl=auto)")
    assert math.isclose(r["loss"], r["chunked_loss"], rel_tol=1e-6)     # the broken kernel is not used


def test_triton_asked_for_is_refused_when_the_kernel_fails(child):
    message = child["objective"]["triton-broken"]["raised"]
    assert message is not None
    assert message.startswith("relation_impl=triton: the fused kernel failed its self-check against the chunked "
                              "loss on cpu")
    assert "RuntimeError: PTX compilation failed" in message
    assert "use relation_impl=chunked (or auto" in message


def test_no_check_without_the_kernel(child):
    assert child["objective"]["chunked-no-check"]["check"] is None


# --------------------------------------------------------------------------- a run, end to end
BREAK_KERNEL = """
import distill.kernels as kernels, distill.relations as relations
real_resolve = relations.resolve_relation_impl
relations.resolve_relation_impl = lambda impl, device: "triton" if impl == "auto" else real_resolve(impl, device)
def broken(*a, **k):
    raise RuntimeError("an illegal memory access was encountered")
kernels.relation_loss_triton = broken
"""


def _run(assets: Path, out: Path, impl: str) -> subprocess.CompletedProcess:
    from test_distill_run import distill_args

    args = distill_args(assets, out, relation_impl=impl, max_steps=2, logging_steps=1, save_steps=0)
    script = f"import runpy, sys\n{BREAK_KERNEL}\nsys.argv = ['launch/distill.py'] + {args!r}\n" \
             "runpy.run_path('launch/distill.py', run_name='__main__')\n"
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**INTERPRETER_ENV, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_run_logs_the_failed_check_once_and_trains_with_the_chunked_loss(tiny, tmp_path):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "auto"
    proc = _run(tiny, out, "auto")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("relation kernel self-check")]
    assert len(lines) == 1, proc.stdout[-3000:]
    assert "FAILED on cpu" in lines[0] and "RuntimeError: an illegal memory access" in lines[0]
    assert lines[0].endswith("training with the chunked loss instead (relation_impl=auto)")
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    texts = [e.tensor_proto.string_val[0].decode() for e in acc.Tensors("relation_kernel/self_check/text_summary")]
    assert texts == [lines[0]]
    assert (out / "student" / "config.json").is_file()


@pytest.mark.slow
def test_a_run_asking_for_triton_stops_with_exit_2_before_writing(tiny, tmp_path):  # noqa: F811
    out = tmp_path / "triton"
    proc = _run(tiny, out, "triton")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "error: relation_impl=triton: the fused kernel failed its self-check" in proc.stderr, proc.stderr[-3000:]
    assert "an illegal memory access" in proc.stderr
    assert not out.exists() or list(out.iterdir()) == []


if __name__ == "__main__":          # the child process of `child`
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        sys.exit("run through pytest, or with TRITON_INTERPRET=1: the interpreter must be on before triton loads")
    torch.set_num_threads(1)
    print(json.dumps({"self_check": _self_check_cases(), "objective": _objective_cases()}))
