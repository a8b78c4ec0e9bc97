"""tools/gpu_check.py: its CPU dry run goes through every step and writes the whole report; bad input exits 2."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from helpers import ASSETS, REPO, cpu_env

SCRIPT = str(REPO / "tools" / "gpu_check.py")
ENV = cpu_env(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def run_check(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_without_cuda_it_refuses_and_writes_nothing(tmp_path):
    done = run_check("--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert ("error: no CUDA GPU here: run make gpu-check on a GPU machine, or --dry-run to rehearse on CPU"
            in done.stderr)
    assert not (tmp_path / "out").exists()


def test_a_report_it_did_not_write_is_never_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "gpu_check.md").write_text("my notes\n")
    done = run_check("--dry-run", "--out", str(out))
    assert done.returncode == 2 and "was not written by this check" in done.stderr
    assert (out / "gpu_check.md").read_text() == "my notes\n" and sorted(os.listdir(out)) == ["gpu_check.md"]


@pytest.mark.slow
@pytest.mark.extended  # about a minute: `make test-extended` (CI), not `make test`
def test_dry_run_goes_through_every_step_and_reports_every_figure(tmp_path):
    if not (ASSETS / "teacher" / "config.json").is_file() or not (ASSETS / "corpus").is_dir():
        pytest.skip(f"offline assets not found under {ASSETS}: run `bash tools/fetch_offline_assets.sh`")
    out = tmp_path / "out"
    done = run_check("--dry-run", "--out", str(out), "--assets", str(ASSETS))
    assert done.returncode == 0, done.stderr[-4000:]
    text = (out / "gpu_check.md").read_text()
    assert sorted(os.listdir(out)) == ["gpu_check.md"]  # the work files are gone
    for heading in ("# GPU check: dry run", "## Targets", "## Steps", "## 1. `pytest -m gpu`",
                    "## 2. Kernel benchmark", "## 3. Step benchmark", "## 4. A real run"):
        assert heading in text, heading
    for line in ("- GPU: none", "- versions: python", "torch", "deepspeed", "transformers", "triton"):
        assert line in text
    assert "(skipped: no CUDA)" in text and "Output of failed step" not in text
    steps = re.findall(r"^\| \d+ \| (.+?) \| (\w+)", text, re.M)
    assert len(steps) == 8 and all(status == "passed" for _, status in steps), steps
    # every command is shown, and the figures of each step are in the report
    for command in ("python -m pytest -m gpu", "tools/bench/kernel_bench.py", "tools/bench/distill_bench.py",
                    "tools/pretokenize.py", "deepspeed.launcher.runner", "--resume=auto", "--compare-exports"):
        assert command in text, command
    assert re.search(r"\| triton \(ieee, default tiles\) \| [\d.]+ \|", text)
    assert re.search(r"\| chunked \| 32 \| 2 \| fp32 \| 1 \| AdamW \| sdpa \(float32\) \| [\d.]+ \|", text)
    assert re.search(r"\| relation loss share of the step at S=32 \| [\d.]+% \| <= 10% \| n/a \(dry run\) \|", text)
    assert re.search(r"\| Triton vs chunked, time \(float32\) \| [\d.]+x \|", text)
    assert re.search(r"checkpoints after SIGTERM: 4, [5-7]; the run said: stopped by signal at step [5-7]", text)
    assert re.search(r"\| resumed vs straight run, weights \(max relative L2 per tensor\) \| 0\.00e\+00 \| "
                     r"<= 1e-06 \| met \|", text)
    assert "exports loaded with AutoModel: BertModel" in text


# --------------------------------------------------------------------------- the GPU run's judgements, without a GPU
def gpu_check_module():
    """tools/gpu_check.py imported as a module (it is a script, not part of the package)."""
    import importlib.util

    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


def fake_bench(gc, rows: list[dict]):
    """A Check.step that writes the step benchmark's JSON as distill_bench.py would, instead of running it."""
    def step(check, title, cmd, timeout, *, env=None, needs=()):
        s = check.add(title, cmd, timeout, env=env, needs=needs)
        if title == "step benchmark":
            (check.work / "distill_bench.json").write_text(__import__("json").dumps({"rows": rows}))
        s.status, s.rc = "passed", 0
        return s
    return step


BENCH_ROW = {"seq": 512, "mfu": 0.5, "loss_share": 0.05, "max_batch": 64, "teacher_attention": "sdpa"}


def gpu_checker(gc, tmp_path):
    return gc.Check(gc.gpu_plan(tmp_path), tmp_path, tmp_path / "work")


def optimizer_target(check):
    return next(t for t in check.targets if t.name == "optimizer DeepSpeed built")


def test_the_torch_adamw_fallback_is_reported_not_failed(tmp_path, monkeypatch):
    """Where FusedAdam cannot be built, the run trains with torch's fused AdamW: the check names it and passes."""
    from distill import config

    gc = gpu_check_module()
    monkeypatch.setattr(gc.Check, "step", fake_bench(gc, [{**BENCH_ROW, "fused_adam": "AdamW"}]))
    monkeypatch.setattr(config, "fused_adam_problem", lambda: "nvcc not found (no CUDA toolkit)")
    check = gpu_checker(gc, tmp_path)
    gc.check_bench(check)
    target = optimizer_target(check)
    assert target.verdict == "met" and target.figure == "AdamW (torch fallback)"
    assert any("torch.optim.AdamW ran instead of DeepSpeed's FusedAdam, which cannot be built here: nvcc not found "
               "(no CUDA toolkit);" in line for line in check.sections["bench"]), check.sections["bench"]


def test_adamw_where_fused_adam_builds_is_still_missed(tmp_path, monkeypatch):
    from distill import config

    gc = gpu_check_module()
    monkeypatch.setattr(gc.Check, "step", fake_bench(gc, [{**BENCH_ROW, "fused_adam": "AdamW"}]))
    monkeypatch.setattr(config, "fused_adam_problem", lambda: None)
    check = gpu_checker(gc, tmp_path)
    gc.check_bench(check)
    assert optimizer_target(check).verdict == "MISSED"
    monkeypatch.setattr(gc.Check, "step", fake_bench(gc, [{**BENCH_ROW, "fused_adam": "FusedAdam"}]))
    monkeypatch.setattr(config, "fused_adam_problem", lambda: pytest.fail("not asked when FusedAdam ran"))
    check = gpu_checker(gc, tmp_path)
    gc.check_bench(check)
    assert optimizer_target(check).verdict == "met" and optimizer_target(check).figure == "FusedAdam"


def test_triton_that_cannot_run_fails_the_kernel_step_with_the_reason(tmp_path, monkeypatch):
    """A GPU node without a C compiler: Triton cannot build its launcher; the kernel step says so, and so do the
    report's environment lines and the pytest step's note, instead of a crash's traceback."""
    import distill.kernels as kernels

    gc = gpu_check_module()
    reason = "no C compiler (cc, gcc, clang) found: Triton compiles a small launcher; install gcc"
    monkeypatch.setattr(kernels, "unavailable_reason", lambda device=None: reason)
    monkeypatch.setattr(gc, "run_group", lambda step, env, watch=None: pytest.fail(f"{step.title} was run"))
    check = gpu_checker(gc, tmp_path)
    gc.check_kernel(check)
    step = check.steps[-1]
    assert step.title == "kernel benchmark" and step.status == "failed"
    assert step.note == f"the Triton kernels cannot run here: {reason}"
    assert {t.verdict for t in check.targets} == {"not measured"}
    assert f"- Triton kernels: cannot run here: {reason}" in gc.environment(False, check.triton)
    monkeypatch.setattr(kernels, "unavailable_reason", lambda device=None: None)
    assert "- Triton kernels: ready" in gc.environment(False, gpu_checker(gc, tmp_path).triton)


def test_the_dry_run_hides_cuda_from_deepspeed_too(tmp_path):
    gc = gpu_check_module()
    check = gc.Check(gc.dry_plan(tmp_path), tmp_path, tmp_path / "work")
    assert check.env["CUDA_VISIBLE_DEVICES"] == "" and check.env["DS_ACCELERATOR"] == "cpu"
