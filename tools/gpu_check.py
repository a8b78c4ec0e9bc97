#!/usr/bin/env python
"""Check a CUDA GPU machine end to end and write one Markdown report: OUT/gpu_check.md.

    python tools/gpu_check.py --out DIR [--dry-run] [--assets assets] [--work DIR]
    make gpu-check [GPU_CHECK_ARGS="--dry-run"]           # --out tools/bench/results/gpu_check

Each step runs in its own process (group) with its own timeout; a step that fails is recorded as
failed with the tail of its output, and the check goes on to the next one:
  1. `pytest -m gpu`: the fused kernel against float64, half inputs, no S x S allocation;
  2. tools/bench/kernel_bench.py: the relation loss alone (B=32, S=512, A_r=48, 768 -> 384 wide),
     Triton vs chunked vs reference, time and peak memory;
  3. tools/bench/distill_bench.py: a BERT-base-shaped teacher (random weights, nothing downloaded)
     into a 6 x 384 student at S=128 and S=512, bf16, ZeRO-1, DeepSpeed's Adam: s/step, tokens/s,
     MFU, the loss's share of the step, peak memory, the largest micro-batch within 48 GB, the
     optimizer DeepSpeed built (FusedAdam; torch's fused AdamW where FusedAdam cannot be built here,
     as a run then falls back to it: the report says which and why) and the teacher's attention
     implementation;
  4. a real run on the offline assets: tools/pretokenize.py shards, `deepspeed launch/distill.py`
     (fp16 teacher, bf16 student) for 60 steps with a checkpoint at step 30, SIGTERM once that
     checkpoint exists, `--resume auto` to the end, a straight 60-step run, and both exported
     students loaded with AutoModel and compared within a stated bf16 tolerance.
Targets: Triton >= 3x faster than chunked and >= 8x less memory than the reference; MFU >= 45%
at S=512; the loss <= 10% of the step at 512; a micro-batch >= 64 at 512 within 48 GB; DeepSpeed's
fused Adam (or torch's fused AdamW where FusedAdam cannot be built); sdpa attention in the teacher;
the whole check under 8 minutes (H100-class card). Where the Triton kernels cannot run on the GPU
(distill.kernels.unavailable_reason: no triton, no C compiler or Python headers for its launcher),
the report says why and the kernel benchmark fails with that reason instead of running.

--dry-run rehearses the same sequence on CPU with tiny shapes (CUDA hidden from every step,
DS_ACCELERATOR=cpu; the GPU tests are collected and skipped); its figures test this script, not
the hardware, and no performance target is judged (the resumed run must still equal the straight
one). Without CUDA and without --dry-run it stops with exit status 2.

Exit status: 0 every step passed and every target was met; 1 a step failed, or a target was
missed or could not be measured (the report says which); 2 bad input (no CUDA GPU, assets or
--out unusable), before anything is written. OUT/gpu_check.md is replaced only when an earlier
check wrote it; the work files (shards, runs, logs) go to --work or a temporary folder, removed
at the end unless --work is given.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- written by tools/gpu_check.py: `make gpu-check` replaces this file -->"
NO_CUDA = "no CUDA GPU here: run make gpu-check on a GPU machine, or --dry-run to rehearse on CPU"
TOTAL_TARGET_S = 480
RESUME_TARGET = "resumed vs straight run, weights (max relative L2 per tensor)"
INSTALL_HINT = ("install it (pip install deepspeed; offline: bash tools/install.sh --wheelhouse DIR with a "
                "wheelhouse built by tools/wheelhouse.sh)")


@dataclass
class Plan:
    """Everything that differs between the GPU check and the CPU dry run."""

    dry: bool
    pytest_timeout: int
    kernel: list[str]
    kernel_timeout: int
    bench: list[str]
    bench_timeout: int
    corpus: list[str]
    pretokenize: list[str]
    run: dict
    steps: int
    save_at: int
    run_timeout: int
    tolerance: float
    tolerance_note: str


def gpu_plan(assets: Path) -> Plan:
    corpus = [str(p) for p in (assets / "corpus" / "sotu", assets / "corpus" / "brown") if p.is_dir()]
    return Plan(
        dry=False, pytest_timeout=300,
        kernel=["--dtype", "bfloat16,float32", "--warmup", "3", "--repeats", "10"], kernel_timeout=300,
        bench=["--teacher", "bert-base", "--student-layers", "6", "--student-hidden", "384", "--student-heads", "12",
               "--relation-heads", "48", "--seq-len", "128", "512", "--batch", "64", "--steps", "10", "--warmup", "3",
               "--deepspeed-config", "ds_configs/single_gpu_bf16.json", "--memory-budget-gb", "48",
               "--find-max-batch"], bench_timeout=360,
        corpus=corpus or [str(assets / "corpus" / "reviews.jsonl")], pretokenize=[],
        run=dict(student_layer=3, student_hidden_size=384, student_attention_heads=12, num_relation_heads=48,
                 max_seq_len=128, per_device_train_batch_size=64, teacher_dtype="float16",
                 deepspeed_config="ds_configs/single_gpu_bf16.json", dataloader_num_workers=2),
        steps=60, save_at=30, run_timeout=240, tolerance=1e-2,
        tolerance_note=("bf16 keeps 8 significant bits (2^-8 = 3.9e-3 per weight), and atomic additions in the fused "
                        "kernel's and the embedding's gradients make the last bits of two GPU runs differ; a resume "
                        "that lost the data position, the schedule or the optimizer state differs by 1e-1 or more"))


def dry_plan(assets: Path) -> Plan:
    sotu = sorted((assets / "corpus" / "sotu").glob("*.txt"))[:2]
    return Plan(
        dry=True, pytest_timeout=180,
        kernel=["--cpu-dry-run", "--batch", "1", "--seq", "16", "--relation-heads", "2", "--teacher-width", "32",
                "--student-width", "16", "--dtype", "float32", "--chunk-sizes", "8", "--precisions", "ieee",
                "--warmup", "0", "--repeats", "1"], kernel_timeout=180,
        bench=["--teacher", "tiny", "--student-layers", "2", "--student-hidden", "32", "--student-heads", "2",
               "--relation-heads", "4", "--seq-len", "16", "32", "--batch", "2", "--steps", "2", "--warmup", "1",
               "--deepspeed-config", "ds_configs/cpu.json", "--threads", "1"], bench_timeout=180,
        corpus=[str(p) for p in sotu] or [str(assets / "corpus" / "reviews.jsonl")],
        pretokenize=["--num-workers", "1"],
        run=dict(student_layer=2, student_hidden_size=24, student_attention_heads=2, num_relation_heads=12,
                 max_seq_len=32, per_device_train_batch_size=4, teacher_dtype="float32",
                 deepspeed_config="ds_configs/cpu.json", dataloader_num_workers=0),
        steps=8, save_at=4, run_timeout=180, tolerance=1e-6,
        tolerance_note="fp32 on CPU is deterministic: the two runs must agree to float32 rounding")


@dataclass
class Step:
    """One command of the check and what came of it."""

    title: str
    cmd: list[str]
    timeout: int
    env: dict = field(default_factory=dict)
    needs: tuple = ()
    rc: int | None = None
    seconds: float = 0.0
    status: str = "not run"   # passed, failed, not run
    note: str = ""
    tail: str = ""
    log: Path | None = None

    def fail(self, note: str) -> None:
        self.status, self.note = "failed", note


@dataclass
class Target:
    name: str
    figure: str
    goal: str
    verdict: str   # met, MISSED, not measured, n/a (dry run)


# --------------------------------------------------------------------------- processes
def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group `pgid`."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def run_group(step: Step, env: dict, watch=None) -> None:
    """Run `step.cmd` in its own process group, its output to `step.log`; `watch(proc)` is polled while it runs.

    The step ends when every process of its group has exited (a launcher may exit before its ranks);
    past `step.timeout` the whole group is killed and the step fails.
    """
    t0 = time.monotonic()
    with open(step.log, "wb") as log:
        proc = subprocess.Popen(step.cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        while (proc.poll() is None or group_alive(proc.pid)) and time.monotonic() - t0 < step.timeout:
            if watch is not None and proc.poll() is None:
                watch(proc)
            time.sleep(0.02)
        if proc.poll() is None or group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            step.fail(f"timed out after {step.timeout} s (the process group was killed)")
    step.rc, step.seconds = proc.returncode, time.monotonic() - t0
    text = step.log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    step.tail = "\n".join(line for line in text.splitlines() if line.strip())[-3000:]
    if step.status == "not run":
        step.status = "passed" if step.rc == 0 else "failed"
        if step.rc != 0:
            step.note = f"exit status {step.rc}"


class Check:
    """The sequence of steps, their figures and targets."""

    def __init__(self, plan: Plan, assets: Path, work: Path):
        self.plan, self.assets, self.work = plan, assets, work
        self.steps: list[Step] = []
        self.targets: list[Target] = []
        self.sections: dict[str, list[str]] = {}
        self.missing = [m for m in ("deepspeed", "triton", "transformers") if importlib.util.find_spec(m) is None]
        self.triton = None if plan.dry else triton_problem()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if plan.dry:
            self.env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu",
                            OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        (work / "logs").mkdir(parents=True, exist_ok=True)

    def add(self, title: str, cmd: list[str], timeout: int, *, env: dict | None = None, needs=()) -> Step:
        step = Step(title, cmd, timeout, env or {}, tuple(needs))
        step.log = self.work / "logs" / f"{len(self.steps) + 1:02d}.log"
        self.steps.append(step)
        return step

    def execute(self, step: Step, watch=None, judge=None) -> Step:
        """Run `step` (polling `watch(proc)` meanwhile), then `judge(step)` may settle its status."""
        missing = [m for m in step.needs if m in self.missing]
        if missing:
            step.fail(f"{', '.join(missing)} is not installed here: {INSTALL_HINT}")
            return step
        print(f"[gpu_check] {step.title}: {self.shown(step.cmd)}", file=sys.stderr, flush=True)
        run_group(step, {**self.env, **step.env}, watch)
        if judge is not None:
            judge(step)
        print(f"[gpu_check]    {step.title}: {step.status} in {step.seconds:.0f} s {step.note}", file=sys.stderr,
              flush=True)
        return step

    def step(self, title: str, cmd: list[str], timeout: int, *, env: dict | None = None, needs=()) -> Step:
        return self.execute(self.add(title, cmd, timeout, env=env, needs=needs))

    def shown(self, cmd: list[str]) -> str:
        """The command as a reader would type it: python, $WORK for the work folder."""
        text = shlex.join(cmd).replace(shlex.quote(sys.executable), "python")
        return text.replace(str(self.work), "$WORK").replace(str(REPO) + "/", "")

    def target(self, name: str, value, goal: str, ok, fmt: str = "{}") -> None:
        """Record a target: `ok(value)` judges it (GPU only); a None value was not measured."""
        figure = "-" if value is None else fmt.format(value)
        if self.plan.dry:
            verdict = "n/a (dry run)"
        else:
            verdict = "not measured" if value is None else ("met" if ok(value) else "MISSED")
        self.targets.append(Target(name, figure, goal, verdict))


# --------------------------------------------------------------------------- the steps
def check_pytest(check: Check) -> None:
    py = sys.executable
    step = check.step("pytest -m gpu", [py, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                                        "tests"], check.plan.pytest_timeout)
    counts = pytest_counts(step.tail)
    if step.rc == 5:
        step.fail("no test marked gpu was collected")
    elif step.status == "passed" and not check.plan.dry and (counts.get("skipped") or not counts.get("passed")):
        step.fail("GPU tests were skipped on a CUDA machine (see the reasons below)")
    if step.status == "failed" and check.triton:
        step.note += f" (the Triton kernels cannot run here: {check.triton})"
    summary = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no summary line"
    if check.plan.dry and step.status == "passed":
        summary += " (skipped: no CUDA)"
    check.sections["pytest"] = [f"Result: {summary}."]


def pytest_counts(text: str) -> dict[str, int]:
    lines = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|error)", line)]
    if not lines:
        return {}
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)",
                                             lines[-1])}


def triton_problem() -> str | None:
    """Why the Triton kernels cannot run on this machine's GPU, or None (distill.kernels.unavailable_reason: triton
    missing, no CUDA, or the host's C compiler or Python headers that Triton builds its launcher with)."""
    from distill.kernels import unavailable_reason

    return unavailable_reason("cuda")


def check_kernel(check: Check) -> None:
    out, js = check.work / "kernel_bench.md", check.work / "kernel_bench.json"
    env = {"TRITON_INTERPRET": "1"} if check.plan.dry else {}
    cmd = [sys.executable, "tools/bench/kernel_bench.py", *check.plan.kernel, "--out", str(out), "--json", str(js)]
    step = check.add("kernel benchmark", cmd, check.plan.kernel_timeout, env=env, needs=("triton",))
    if check.triton:  # known before: a failed step with the reason, not a crash's traceback
        step.fail(f"the Triton kernels cannot run here: {check.triton}")
    else:
        check.execute(step)
    data = json.loads(js.read_text()) if step.status == "passed" and js.is_file() else {"dtypes": []}
    check.sections["kernel"] = bench_tables(out)
    for dtype in data["dtypes"] or [{"dtype": "bfloat16"}]:
        name = dtype["dtype"]
        check.target(f"Triton vs chunked, time ({name})", dtype.get("speedup_vs_chunked"), ">= 3x faster",
                     lambda v: v >= 3.0, "{:.2f}x")
        check.target(f"Triton vs reference, peak memory ({name})", dtype.get("memory_ratio_vs_reference"),
                     ">= 8x less", lambda v: v >= 8.0, "{:.1f}x")


def bench_tables(path: Path) -> list[str]:
    """A benchmark's Markdown, its headings pushed under this report's."""
    if not path.is_file():
        return []
    return [("###" + line) if line.startswith("#") else line for line in path.read_text().splitlines()]


def check_bench(check: Check) -> None:
    out, js = check.work / "distill_bench.md", check.work / "distill_bench.json"
    step = check.step("step benchmark", [sys.executable, "tools/bench/distill_bench.py", *check.plan.bench,
                                         "--out", str(out), "--json", str(js)],
                      check.plan.bench_timeout, needs=("deepspeed",))
    rows = json.loads(js.read_text())["rows"] if step.status == "passed" and js.is_file() else []
    check.sections["bench"] = bench_tables(out)
    last = max(rows, key=lambda r: r["seq"]) if rows else {}
    seq = last.get("seq", 512)
    check.target(f"MFU at S={seq}", last.get("mfu"), ">= 45%", lambda v: v >= 0.45, "{:.1%}")
    check.target(f"relation loss share of the step at S={seq}", last.get("loss_share"), "<= 10%",
                 lambda v: v <= 0.10, "{:.1%}")
    check.target(f"largest micro-batch at S={seq} within 48 GB", last.get("max_batch"), ">= 64",
                 lambda v: v >= 64)
    judge_optimizer(check, last.get("fused_adam"))
    check.target("teacher attention implementation", last.get("teacher_attention"), "sdpa", lambda v: v == "sdpa")


def judge_optimizer(check: Check, name: str | None) -> None:
    """The optimizer target: DeepSpeed's FusedAdam; or torch's AdamW where FusedAdam cannot be built here (the run
    then falls back to torch.optim.AdamW(fused=True): distill.config.fused_adam_problem, asked here as well)."""
    problem = None
    if name not in (None, "FusedAdam") and not check.plan.dry:
        from distill.config import fused_adam_problem

        problem = fused_adam_problem()
    fallback = name == "AdamW" and problem is not None
    if fallback:
        check.sections["bench"].append(
            f"- optimizer: torch.optim.AdamW ran instead of DeepSpeed's FusedAdam, which cannot be built here: "
            f"{problem}; FusedAdam needs the CUDA toolkit (nvcc) of torch's CUDA version, ninja and a C++ "
            f"compiler, or a deepspeed installed with DS_BUILD_FUSED_ADAM=1")
    check.target("optimizer DeepSpeed built", name,
                 "FusedAdam (DeepSpeed's fused CUDA Adam), or torch's fused AdamW where FusedAdam cannot be built",
                 lambda v: v == "FusedAdam" or fallback, "{} (torch fallback)" if fallback else "{}")


def run_flags(check: Check, out: Path, **extra) -> list[str]:
    plan = check.plan
    flags = dict(teacher=check.assets / "teacher", data=check.work / "shards", output_dir=out, max_steps=plan.steps,
                 save_steps=plan.save_at, logging_steps=2 if plan.dry else 10, learning_rate=5e-4, warmup_steps=2,
                 seed=42, **plan.run)
    flags.update(extra)
    return [f"--{k}={v}" for k, v in flags.items()]


def deepspeed_cmd(flags: list[str]) -> list[str]:
    """`deepspeed --num_gpus 1 launch/distill.py ...` (the `deepspeed` script runs this module)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", str(port),
            "launch/distill.py", *flags]


def complete_steps(run: Path) -> list[int]:
    ckpts = run / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in ckpts.glob("step-*") if (p / "COMPLETE").is_file())


def check_real_run(check: Check) -> None:
    plan, work = check.plan, check.work
    lines = check.sections.setdefault("run", [])
    pre = check.step("pretokenize the offline corpus", [
        sys.executable, "tools/pretokenize.py", "--tokenizer_name", str(check.assets / "teacher"), "--input",
        *plan.corpus, "--output_dir", str(work / "shards"), "--no-progress", *plan.pretokenize], 300)
    if pre.status != "passed":
        check.target(RESUME_TARGET, None, "", None)
        return
    run, straight = work / "run", work / "straight"
    sent = {}

    def sigterm_after_checkpoint(proc):
        if not sent and plan.save_at in complete_steps(run):
            os.killpg(proc.pid, signal.SIGTERM)
            sent["at"] = time.monotonic()

    # the straight run goes beside the interrupted one (small models: one GPU holds both)
    full = check.add(f"a straight {plan.steps}-step run (beside the next two)",
                     deepspeed_cmd(run_flags(check, straight, save_steps=0)), 2 * plan.run_timeout,
                     needs=("deepspeed",))
    first = check.add(f"distil {plan.steps} steps, SIGTERM after the step-{plan.save_at} checkpoint",
                      deepspeed_cmd(run_flags(check, run)), plan.run_timeout, needs=("deepspeed",))
    resume = check.add("--resume auto to the end", deepspeed_cmd(run_flags(check, run, resume="auto")),
                       plan.run_timeout, needs=("deepspeed",))
    beside = threading.Thread(target=check.execute, args=(full,))
    beside.start()
    check.execute(first, watch=sigterm_after_checkpoint, judge=lambda step: judge_sigterm(step, plan, run, sent))
    saved = complete_steps(run)
    stopped = [int(n) for n in re.findall(r"stopped by signal at step (\d+)", first.tail)]
    lines.append(f"- checkpoints after SIGTERM: {', '.join(map(str, saved)) or 'none'}; "
                 f"the run said: stopped by signal at step {stopped[-1] if stopped else '-'}")
    check.execute(resume)
    beside.join()
    if "passed" == resume.status == full.status:
        check_exports(check, run / "student", straight / "student")
    else:
        check.target(RESUME_TARGET, None, "", None)


def judge_sigterm(first: Step, plan: Plan, run: Path, sent: dict) -> None:
    """The interrupted run passed when SIGTERM, sent after the step-K checkpoint, made its ranks save a later one."""
    saved = complete_steps(run)
    stopped = [int(n) for n in re.findall(r"stopped by signal at step (\d+)", first.tail)]
    if first.status == "passed" or (first.status == "failed" and first.rc not in (0, None)
                                    and not first.note.startswith("timed out")):
        if not sent:
            first.fail(f"the run ended before its step-{plan.save_at} checkpoint was complete: SIGTERM not exercised")
        elif not stopped or not saved or not plan.save_at < saved[-1] < plan.steps:
            first.fail(f"SIGTERM did not stop the run with a checkpoint between steps {plan.save_at} and {plan.steps} "
                       f"(complete checkpoints: {saved}); the launcher's exit status was {first.rc}")
        else:  # the launcher itself may die of the signal (143) while its ranks save
            first.status, first.note = "passed", f"launcher exit status {first.rc}; the ranks saved step {saved[-1]}"


def check_exports(check: Check, resumed: Path, straight: Path) -> None:
    plan = check.plan
    step = check.step("load both exports with AutoModel and compare", [
        sys.executable, str(Path(__file__).resolve()), "--compare-exports", str(resumed), str(straight)], 300)
    data = json.loads(step.tail.splitlines()[-1]) if step.status == "passed" else {}
    lines = check.sections["run"]
    if data:
        lines.append(f"- exports loaded with AutoModel: {data['class']}, {data['tensors']} tensors, "
                     f"{data['parameters']:,} parameters; worst tensor {data['worst']}: relative L2 difference "
                     f"{data['max_rel_l2']:.2e}, largest absolute difference {data['max_abs']:.2e}")
    lines.append(f"- tolerance: per tensor, ||resumed - straight|| / ||straight|| <= {plan.tolerance:g}: "
                 f"{plan.tolerance_note}")
    value = data.get("max_rel_l2")
    ok = value is not None and value <= plan.tolerance
    if value is not None and not ok:
        step.fail(f"the resumed run's weights differ from the straight run's by {value:.2e} > {plan.tolerance:g}")
    # judged in the dry run too: the rehearsal's runs must agree as well
    check.targets.append(Target(RESUME_TARGET,
                                "-" if value is None else f"{value:.2e}", f"<= {plan.tolerance:g}",
                                "not measured" if value is None else ("met" if ok else "MISSED")))


def compare_exports(a: str, b: str) -> int:
    """Print (JSON, one line) how far two exported students differ, tensor by tensor."""
    from transformers import AutoModel

    ma, mb = AutoModel.from_pretrained(a), AutoModel.from_pretrained(b)
    sa, sb = ma.state_dict(), mb.state_dict()
    if sa.keys() != sb.keys():
        print(f"error: the exports hold different tensors: {sorted(set(sa) ^ set(sb))[:5]}", file=sys.stderr)
        return 1
    rel = {k: ((sa[k].double() - sb[k].double()).norm() / sb[k].double().norm().clamp_min(1e-30)).item() for k in sa}
    worst = max(rel, key=rel.get)
    print(json.dumps({"class": type(ma).__name__, "tensors": len(sa), "worst": worst, "max_rel_l2": rel[worst],
                      "parameters": sum(p.numel() for p in ma.parameters()),
                      "max_abs": max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)}))
    return 0


# --------------------------------------------------------------------------- the report
def environment(dry: bool, triton: str | None = None) -> list[str]:
    """GPU (from nvidia-smi: no CUDA context is made here), driver, the versions that matter, and whether the
    Triton kernels can run on the GPU (`triton`: why not; not asked in the dry run)."""
    import torch

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "NOT INSTALLED"

    gpu = "none (dry run on CPU)" if dry else "unknown (nvidia-smi failed)"
    if not dry:
        try:
            query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
            gpu = subprocess.run(query, capture_output=True, text=True, timeout=30,
                                 check=True).stdout.strip().splitlines()[0]
            name, driver, memory = (x.strip() for x in gpu.split(","))
            gpu = f"{name}; driver {driver}; {memory}"
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    kernels = "the CPU interpreter (dry run)" if dry else f"cannot run here: {triton}" if triton else "ready"
    return [f"- GPU: {gpu}",
            f"- host: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs",
            f"- versions: python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"triton {version('triton')}, deepspeed {version('deepspeed')}, transformers {version('transformers')}",
            f"- Triton kernels: {kernels}",
            f"- checkout: {commit}; command: `python tools/gpu_check.py {shlex.join(sys.argv[1:])}`",
            f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}"]


SECTIONS = (("pytest", "1. `pytest -m gpu`"), ("kernel", "2. Kernel benchmark (relation loss alone)"),
            ("bench", "3. Step benchmark (BERT-base shape into 6 x 384)"),
            ("run", "4. A real run: SIGTERM, `--resume auto`, export"))


def markdown(check: Check, env_lines: list[str], total_s: float) -> str:
    plan = check.plan
    title = "dry run on CPU (tiny shapes: these figures test the script, not a GPU)" if plan.dry else "GPU"
    check.target("the whole check", total_s, f"< {TOTAL_TARGET_S // 60} minutes on an H100-class card",
                 lambda v: v < TOTAL_TARGET_S, "{:.0f} s")
    failed = [s for s in check.steps if s.status != "passed"]
    lines = [MARKER, f"# GPU check: {title}", "", *env_lines, f"- total time: {total_s:.0f} s", "",
             f"**{len(check.steps) - len(failed)} of {len(check.steps)} steps passed; "
             f"{sum(t.verdict == 'met' for t in check.targets)} of {len(check.targets)} targets met.**", "",
             "## Targets", "", "| target | figure | goal | verdict |", "|---|---:|---|---|",
             *[f"| {t.name} | {t.figure} | {t.goal} | {t.verdict} |" for t in check.targets], "",
             "## Steps", "", "| # | step | status | seconds | command |", "|---:|---|---|---:|---|",
             *[f"| {i} | {s.title} | {s.status}{': ' + s.note if s.note else ''} | {s.seconds:.0f} | "
               f"`{check.shown(s.cmd)}` |" for i, s in enumerate(check.steps, 1)], ""]
    if check.missing:
        lines += [f"Not installed: {', '.join(check.missing)}; the steps that need them failed: {INSTALL_HINT}.", ""]
    for key, heading in SECTIONS:
        lines += [f"## {heading}", "", *check.sections.get(key, ["(not run)"]), ""]
    for i, s in enumerate(check.steps, 1):
        if s.status != "passed":
            lines += [f"## Output of failed step {i}: {s.title}", "", "```", s.tail or "(no output)", "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="folder of the report, OUT/gpu_check.md (required)")
    p.add_argument("--dry-run", action="store_true", help="rehearse the sequence on CPU with tiny shapes")
    p.add_argument("--assets", type=Path, default=Path(os.environ.get("ASSETS", REPO / "assets")),
                   help="the offline assets (bash tools/fetch_offline_assets.sh)")
    p.add_argument("--work", type=Path, help="keep the shards, runs and logs here (a missing or empty folder)")
    p.add_argument("--compare-exports", nargs=2, metavar=("A", "B"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def bad_input(args) -> str | None:
    """What makes the check impossible, with the fix; None when it can run."""
    import torch

    if args.out is None:
        return "--out DIR is required: the report goes to DIR/gpu_check.md (make gpu-check gives one)"
    if not args.dry_run and not torch.cuda.is_available():
        return NO_CUDA
    report = args.out / "gpu_check.md"
    if args.out.exists() and not args.out.is_dir():
        return f"--out {args.out} is a file: give a folder"
    if report.is_dir() or (report.exists() and not report.read_text(errors="replace").startswith(MARKER)):
        return f"{report} exists and was not written by this check: move it away or give another --out"
    if args.work is not None and args.work.exists() and (not args.work.is_dir() or any(args.work.iterdir())):
        return f"--work {args.work} is not an empty folder: give a missing or empty one"
    for path, what in ((args.assets / "teacher" / "config.json", "the offline teacher"),
                       (args.assets / "corpus", "the offline corpus")):
        if not path.exists():
            return f"{what} is missing ({path}): run bash tools/fetch_offline_assets.sh {args.assets} (or make assets)"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compare_exports:
        return compare_exports(*args.compare_exports)
    problem = bad_input(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    assets = args.assets.resolve()
    plan = dry_plan(assets) if args.dry_run else gpu_plan(assets)
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    t0 = time.monotonic()
    try:
        check = Check(plan, assets, work)
        if check.missing:
            print(f"[gpu_check] not installed: {', '.join(check.missing)}; the steps needing them will fail: "
                  f"{INSTALL_HINT}", file=sys.stderr)
        env_lines = environment(plan.dry, check.triton)
        for part in (check_pytest, check_kernel, check_bench, check_real_run):
            part(check)
        text = markdown(check, env_lines, time.monotonic() - t0)
    finally:
        if args.work is None:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    from distill.io import atomic_write_bytes

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "gpu_check.md", [text.encode("utf-8")])
    bad = [s for s in check.steps if s.status != "passed"] or [t for t in check.targets
                                                               if t.verdict in ("MISSED", "not measured")]
    print(f"[gpu_check] wrote {args.out / 'gpu_check.md'}: {len(check.steps)} steps, "
          f"{'all passed, every target met' if not bad else f'{len(bad)} failed or missed'}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
