"""tools/gpu_check.py: its CPU dry run goes through every step and writes the whole report; bad input exits 2."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import ASSETS, REPO

SCRIPT = str(REPO / "tools" / "gpu_check.py")
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


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
