"""The distillation job end to end: real multi-process DeepSpeed runs (gloo, CPU) on tiny models over real shards."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, RUN_ENV, WORDS, free_port

from distill.cli_args import flag

pytestmark = pytest.mark.slow

ENV = RUN_ENV


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny BERT teacher (3 layers, hidden 32) with the tiny tokenizer, and shards of a random-word corpus."""
    import random

    from helpers import save_tiny_teacher

    root = tmp_path_factory.mktemp("tiny_run")
    save_tiny_teacher(root / "teacher", tiny_tokenizer_dir)
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))) for _ in range(300)]
    (root / "corpus.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    subprocess.run([sys.executable, "tools/pretokenize.py", "--tokenizer_name", str(root / "teacher"), "--input",
                    str(root / "corpus.txt"), "--output_dir", str(root / "shards"), "--num-workers", "1",
                    "--shard-tokens", "2000"], cwd=REPO, env=ENV, check=True, capture_output=True)
    return root


def distill_args(tiny: Path, out: Path, **overrides) -> list[str]:
    args = {"teacher": tiny / "teacher", "data": tiny / "shards", "deepspeed_config": "ds_configs/cpu.json",
            "student_layer": 2, "student_hidden_size": 16, "student_attention_heads": 2, "num_relation_heads": 4,
            "max_seq_len": 32, "per_device_train_batch_size": 4, "learning_rate": 2e-3, "warmup_steps": 2,
            "max_steps": 8, "logging_steps": 2, "save_steps": 4, "output_dir": out, "dataloader_num_workers": 0,
            "seed": 7}
    args.update(overrides)
    return [f"{flag(k)}={v}" for k, v in args.items() if v is not None]  # flag: --max_seq_length for max_seq_len


def run_deepspeed(args: list[str], ranks: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
           "--master_port", str(free_port()), "launch/distill.py", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def run_python(args: list[str], timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/distill.py", *args], cwd=REPO, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


def student_weights(directory: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModel

    return AutoModel.from_pretrained(directory).state_dict()


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6):
    wa, wb = student_weights(a), student_weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst <= atol, f"weights differ by {worst}"


def scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# --------------------------------------------------------------------------- the main job
@pytest.fixture(scope="module")
def two_rank_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("run2") / "out"
    proc = run_deepspeed(distill_args(tiny, out, max_steps=24, save_steps=8, save_total_limit=2, logging_steps=4))
    return out, proc


def test_two_rank_run_learns_logs_checkpoints_and_exports(two_rank_run):
    from transformers import AutoModel, AutoTokenizer

    out, proc = two_rank_run
    logged = scalars(out)
    loss = [v for _, v in logged["loss/total"]]
    assert [s for s, _ in logged["loss/total"]] == [4, 8, 12, 16, 20, 24]
    assert loss[-1] < 0.8 * loss[0], loss
    for tag in ("loss/qq", "loss/kk", "loss/vv", "train/learning_rate", "train/grad_norm",
                "throughput/samples_per_s", "throughput/tokens_per_s", "time/seconds_per_step"):
        assert tag in logged, tag
    total = [v for _, v in logged["loss/total"]]
    per_relation = [[v for _, v in logged[tag]] for tag in ("loss/qq", "loss/kk", "loss/vv")]
    parts = [sum(x) for x in zip(*per_relation, strict=True)]
    assert all(abs(a - b) < 1e-4 * max(1, a) for a, b in zip(total, parts, strict=True))  # weights are 1
    lr = dict(logged["train/learning_rate"])
    assert lr[24] < lr[8] < 2e-3 + 1e-12  # linear decay after warmup
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert kept == ["step-00000016", "step-00000024"]  # save_total_limit=2
    assert all((out / "checkpoints" / k / "COMPLETE").is_file() for k in kept)
    assert len(list((out / "checkpoints" / kept[-1]).glob("rng-rank*.pt"))) == 2
    model = AutoModel.from_pretrained(out / "student")
    tok = AutoTokenizer.from_pretrained(out / "student")
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 16
    ids = tok("the water", return_tensors="pt")
    assert model(**ids).last_hidden_state.shape == (1, 4, 16)
    assert "exported the student" in proc.stdout + proc.stderr


def test_resume_continues_to_the_same_weights(tiny, two_rank_run, tmp_path):
    """24 steps straight == resume from the step-16 checkpoint and run the last 8 (2 ranks)."""
    out, _ = two_rank_run
    resumed = tmp_path / "resumed"
    run_deepspeed(distill_args(tiny, resumed, max_steps=24, save_steps=8, logging_steps=4,
                               resume=out / "checkpoints" / "step-00000016"))
    assert_same_weights(out / "student", resumed / "student")


def test_torchrun_style_environment_gives_the_same_run(tiny, two_rank_run, tmp_path):
    """Two processes started by hand with RANK/WORLD_SIZE/MASTER_* (as torchrun does)."""
    out, _ = two_rank_run
    other = tmp_path / "torchrun"
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "launch/distill.py",
                               *distill_args(tiny, other, max_steps=24, save_steps=8, save_total_limit=2,
                                             logging_steps=4)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**ENV, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for r in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(x[-2000:] for x in logs)
    assert_same_weights(out / "student", other / "student")


def test_sigterm_saves_a_checkpoint_and_resume_auto_finishes(tiny, tmp_path):
    out = tmp_path / "preempted"
    # DataLoader workers on, and the signal sent to the whole process group, as launchers and schedulers do
    args = distill_args(tiny, out, max_steps=100000, save_steps=0, logging_steps=1, num_relation_heads=2,
                        dataloader_num_workers=1)
    proc = subprocess.Popen([sys.executable, "launch/distill.py", *args], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not list((out / "tensorboard").glob("events*")) and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output[-3000:]
    saved = [p for p in (out / "checkpoints").iterdir() if (p / "COMPLETE").is_file()]
    assert len(saved) == 1, output[-2000:]
    step = int(saved[0].name.split("-")[1])
    assert 0 < step < 100000 and "--resume auto" in output
    done = run_python(distill_args(tiny, out, max_steps=step + 3, save_steps=0, logging_steps=1,
                                   num_relation_heads=2, resume="auto"))
    # The schedule differs (max_steps changed), the model shape does not: resume is allowed and finishes.
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "checkpoints" / f"step-{step + 3:08d}" / "COMPLETE").is_file()


@pytest.mark.extended
def test_export_tool_rebuilds_the_student_from_a_zero2_checkpoint(tiny, tmp_path):
    from transformers import AutoModel

    ds = tmp_path / "zero2.json"
    config = json.loads((REPO / "ds_configs/cpu.json").read_text())
    config["zero_optimization"] = {"stage": 2}
    ds.write_text(json.dumps(config))
    out = tmp_path / "z2"
    run_deepspeed(distill_args(tiny, out, deepspeed_config=ds, max_steps=4, save_steps=2))
    exported = tmp_path / "exported"
    proc = subprocess.run([sys.executable, "tools/export_student.py", str(out / "checkpoints" / "step-00000004"),
                           "--output_dir", str(exported)], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_weights(exported, out / "student", atol=0)
    early = tmp_path / "early"
    subprocess.run([sys.executable, "tools/export_student.py", str(out / "checkpoints" / "step-00000002"),
                    "--output_dir", str(early)], cwd=REPO, env=ENV, check=True, capture_output=True)
    assert AutoModel.from_pretrained(early).config.hidden_size == 16


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides, message", [
    ({"teacher_layer": 5}, "teacher_layer=5 is out of range: the teacher (BertModel) has 3 layers"),
    ({"num_relation_heads": 3}, "--num_relation_heads=3 does not divide --student_hidden_size (16)"),
    ({"num_relation_heads": 12, "student_hidden_size": 48, "student_attention_heads": 4, "student_init": "random"},
     "num_relation_heads=12 does not divide the teacher's width (32): choose a divisor of every width (32, 48)"),
    ({"max_seq_len": 100}, "exceeds"),
    ({"data": "/nonexistent/shards"}, "--data /nonexistent/shards: no such directory"),
    ({"per_device_train_batch_size": 100000}, "fewer than one global micro-batch"),
])
def test_bad_input_is_refused_before_any_work(tiny, tmp_path, overrides, message):
    out = tmp_path / "bad"
    proc = run_python(distill_args(tiny, out, **overrides))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr, proc.stderr[-3000:]
    assert not out.exists() or list(out.iterdir()) == []  # no run file before every check has passed


def test_shards_of_another_tokenizer_are_refused(tiny, tmp_path):
    from helpers import write_shard_dir

    shards = write_shard_dir(tmp_path / "other", [[5, 6, 7]] * 50, vocab_size=30522, sep=102, cls=101)
    proc = run_python(distill_args(tiny, tmp_path / "bad", data=shards))
    assert proc.returncode == 2
    assert "vocab" in proc.stderr and "pretokenize" in proc.stderr, proc.stderr[-2000:]


def test_resuming_another_model_shape_names_the_fields(tiny, two_rank_run, tmp_path):
    out, _ = two_rank_run
    proc = run_python(distill_args(tiny, tmp_path / "x", student_hidden_size=32, student_attention_heads=4,
                                   resume=out / "checkpoints" / "step-00000016"))
    assert proc.returncode == 2
    assert "student_hidden_size: checkpoint 16, this run 32" in proc.stderr, proc.stderr[-2000:]


def test_persistent_nonfinite_loss_stops_with_the_last_checkpoint_intact(tiny, tmp_path):
    out = tmp_path / "nan"
    script = f"""
import runpy, sys
import distill.objective as o
real, calls = o.relation_loss, [0]
def poisoned(*a, **k):  # finite for 7 micro-batches, then NaN for ever
    calls[0] += 1
    loss, parts = real(*a, **k)
    return (loss * float("nan"), parts) if calls[0] > 7 else (loss, parts)
o.relation_loss = poisoned
sys.argv = ["launch/distill.py"] + {distill_args(tiny, out, max_steps=20, save_steps=3)!r}
runpy.run_path("launch/distill.py", run_name="__main__")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]  # a diverged run: DivergedError
    assert "error: the run diverged: the loss was not finite for 10 micro-batches in a row" in proc.stderr
    done = sorted(p.name for p in (out / "checkpoints").iterdir() if (p / "COMPLETE").is_file())
    assert done == ["step-00000003", "step-00000006"]


# --------------------------------------------------------------------------- the run's files
def run_patched(patch: str, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """launch/distill.py in one process, after the Python statements `patch`."""
    script = f"import runpy, sys\n{patch}\nsys.argv = ['launch/distill.py'] + {args!r}\n" \
             "runpy.run_path('launch/distill.py', run_name='__main__')\n"
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


KILL_IN_OPTIMIZER_STATES_OF_STEP_3 = """
import os, signal, torch
real = torch.save
def dying(obj, f, *a, **k):  # dies like kill -9 halfway through the optimizer states of step 3
    if "step-00000003" in str(f) and "optim_states" in str(f):
        with open(f, "wb") as out:
            out.write(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *a, **k)
torch.save = dying
"""


@pytest.mark.extended
def test_a_kill_while_resaving_a_step_keeps_the_old_one_and_resume_auto_works(tiny, tmp_path):
    out = tmp_path / "run"
    small = {"max_steps": 3, "save_steps": 1, "logging_steps": 1}
    first = run_python(distill_args(tiny, out, **small))
    assert first.returncode == 0, first.stderr[-3000:]
    root = out / "checkpoints"
    before = {k: tree(root / f"step-0000000{k}") for k in (1, 2, 3)}
    # resume from step 1 and save only at the end: step 3 is written again, and the process dies doing it
    killed = run_patched(KILL_IN_OPTIMIZER_STATES_OF_STEP_3,
                         distill_args(tiny, out, **{**small, "save_steps": 0}, resume=root / "step-00000001"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert {k: tree(root / f"step-0000000{k}") for k in (1, 2, 3)} == before  # every old checkpoint whole
    assert [p.name for p in root.iterdir() if p.name.startswith(".step-00000003.tmp-")]  # the unfinished save
    resumed = run_python(distill_args(tiny, out, **{**small, "max_steps": 4}, resume="auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert tree(root / "step-00000003") == before[3]
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # the leftover removed
    assert (root / "latest").read_text() == "step-00000004"
    assert (out / "student" / "config.json").is_file()
    # resuming step 1 again: steps 2-4 are another future, moved aside (not deleted) at the first save
    again = run_python(distill_args(tiny, out, **{**small, "max_steps": 2, "save_steps": 0},
                                    resume=root / "step-00000001"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000001", "step-00000002"]
    aside = list(root.glob("abandoned-*"))
    assert len(aside) == 1 and tree(aside[0] / "step-00000003") == before[3]
    assert sorted(p.name for p in aside[0].iterdir()) == ["step-00000002", "step-00000003", "step-00000004"]
    assert "another future" in again.stdout + again.stderr


def test_a_full_disk_while_saving_names_the_last_good_checkpoint(tiny, tmp_path):
    out = tmp_path / "full"
    patch = """
import errno, torch
real = torch.save
def full(obj, f, *a, **k):
    if "step-00000002" in str(f):
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(obj, f, *a, **k)
torch.save = full
"""
    proc = run_patched(patch, distill_args(tiny, out, max_steps=2, save_steps=1, logging_steps=1))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert ("error: no space left on device while saving checkpoint step-00000002 in "
            f"{out / 'checkpoints'}; the last good checkpoint is {out / 'checkpoints' / 'step-00000001'}") \
        in proc.stderr, proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["step-00000001"]
    assert not (out / "student").exists()


def test_a_diverging_run_saves_and_exports_nothing_after_the_last_good_step(tiny, tmp_path):
    """A finite but absurd learning rate: the step that blows the weights up stops the run, unsaved."""
    out = tmp_path / "diverged"
    proc = run_python(distill_args(tiny, out, learning_rate=1e30, max_steps=3, save_steps=2, logging_steps=1))
    assert proc.returncode == 3, proc.stderr[-3000:]  # a diverged run: DivergedError
    assert "error: the run diverged: optimizer step 3 made the student's weights diverge" in proc.stderr, \
        proc.stderr[-3000:]
    assert f"the last good checkpoint is {out / 'checkpoints' / 'step-00000002'}" in proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["step-00000002"]
    assert not (out / "student").exists()


def test_a_fresh_run_into_a_run_directory_is_refused_and_overwrite_keeps_other_files(tiny, tmp_path):
    out = tmp_path / "taken"
    (out / "checkpoints" / "step-00000002").mkdir(parents=True)
    (out / "checkpoints" / "step-00000002" / "COMPLETE").write_text("{}")
    (out / "run_config.json").write_text('{"old": 1}')
    (out / "notes.txt").write_text("mine")
    before = tree(out)
    refused = run_python(distill_args(tiny, out, max_steps=1, warmup_steps=0))
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "already holds a run" in refused.stderr and "--resume auto" in refused.stderr
    assert "--overwrite_output_dir" in refused.stderr, refused.stderr[-3000:]
    assert tree(out) == before
    done = run_python(distill_args(tiny, out, max_steps=1, warmup_steps=0) + ["--overwrite_output_dir"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "run_config.json").read_text())["max_steps"] == 1
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000001"]
