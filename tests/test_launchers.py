"""Launchers and nodes: a signal to the launcher alone, two torchrun nodes on one machine, a node-local output_dir.

Real multi-process runs (gloo, CPU) of the tiny model of test_distill_run.py. Linux only: the ranks
watch their launchers through /proc, and the tests find the ranks there.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_distill_run as runs
from helpers import REPO, RUN_ENV, cpu_env, free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="launcher watching needs /proc")

tiny = runs.tiny  # the module-scoped fixture: a tiny teacher and its shards
RANK_FILES = ("rng-rank00000.pt", "rng-rank00001.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
              "zero_pp_rank_1_mp_rank_00_optim_states.pt")

# Each optimizer step sleeps a little, so that a signal sent once training has started lands mid-run.
SLOW_SCRIPT = """
import runpy, time
import distill.trainer as t
real = t.train_step
def slow(*a, **k):
    time.sleep(0.25)
    return real(*a, **k)
t.train_step = slow
runpy.run_path({script!r}, run_name="__main__")
"""


# --------------------------------------------------------------------------- processes
def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`cmd` in its own session (its process group id is its pid), output to `log`; `env` adds variables."""
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=REPO, env={**RUN_ENV, **(env or {})}, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def group_alive(pgid: int) -> bool:
    """A process of group `pgid` still runs (zombies waiting to be reaped do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] not in "ZXx":
            return True
    return False


def wait_all_gone(procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> None:
    """Every process of the launchers' groups (launchers, ranks, orphans included) has exited; else kill and fail."""
    deadline = time.time() + timeout
    while any(group_alive(p.pid) for p in procs):
        for p in procs:
            p.poll()  # reap the launchers we started
        if time.time() > deadline:
            kill(procs)
            pytest.fail(f"the ranks still ran {timeout:.0f} s later:\n" + tail(logs))
        time.sleep(0.3)
    for p in procs:
        p.wait(timeout=10)


def kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=10)


def tail(logs: list[Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-2500:]}" for log in logs)


def wait_until_training(out: Path, procs: list[subprocess.Popen], logs: list[Path], timeout: float = 120) -> None:
    """Rank 0's TensorBoard file exists (the loop has started), then one more second of steps."""
    deadline = time.time() + timeout
    while not list((out / "tensorboard").glob("events*")):
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            kill(procs)
            pytest.fail("training did not start:\n" + tail(logs))
        time.sleep(0.3)
    time.sleep(1)


def complete_checkpoints(out: Path) -> list[Path]:
    root = out / "checkpoints"
    return sorted(p for p in root.iterdir() if (p / "COMPLETE").is_file()) if root.is_dir() else []


def deepspeed_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
            str(free_port()), "launch/distill.py", *args]


def torchrun_cmds(script: str, args_per_node: list[list[str]]) -> list[list[str]]:
    """Two torchrun agents, nodes 0 and 1 with one rank each, meeting on 127.0.0.1 (static rendezvous)."""
    port = str(free_port())
    return [[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
             "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port, script, *args]
            for node, args in enumerate(args_per_node)]


def run_two_nodes(tmp_path: Path, args_per_node: list[list[str]], name: str,
                  timeout: float = 120, env: dict[str, str] | None = None) -> tuple[list[subprocess.Popen], str]:
    logs = [tmp_path / f"{name}-node{n}.log" for n in range(2)]
    cmds = torchrun_cmds("launch/distill.py", args_per_node)
    procs = [start(cmd, log, env) for cmd, log in zip(cmds, logs, strict=True)]
    wait_all_gone(procs, logs, timeout)
    return procs, tail(logs)


# --------------------------------------------------------------------------- signals to the deepspeed launcher
@pytest.mark.slow
@pytest.mark.parametrize("target", ["launcher_pid", "process_group"])
def test_a_signal_to_the_deepspeed_launcher_checkpoints_every_rank(tiny, tmp_path, target):
    """SIGTERM to the `deepspeed` PID alone (it forwards nothing) or to its whole group: every rank saves and stops."""
    out, log = tmp_path / "out", tmp_path / "deepspeed.log"
    args = runs.distill_args(tiny, out, max_steps=100000, save_steps=0, logging_steps=1, num_relation_heads=2)
    proc = start(deepspeed_cmd(args), log)
    wait_until_training(out, [proc], [log])
    if target == "launcher_pid":
        os.kill(proc.pid, signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    wait_all_gone([proc], [log], timeout=45)
    text = log.read_text()
    saved = complete_checkpoints(out)
    assert len(saved) == 1, text[-3000:]
    assert all((saved[0] / name).is_file() for name in RANK_FILES), sorted(p.name for p in saved[0].iterdir())
    assert "continue with --resume auto" in text and "exported the student" not in text, text[-3000:]
    assert not (out / "student").exists()
    if target == "launcher_pid":  # launch.py outlived the runner and saw both ranks exit 0
        assert "the launcher deepspeed.launcher.runner" in text, text[-3000:]
        assert text.count("exits successfully") == 2, text[-3000:]


# --------------------------------------------------------------------------- two nodes
@pytest.fixture(scope="module")
def two_node_run(tiny, tmp_path_factory):
    """A straight 12-step run on two torchrun nodes of one rank each, sharing one output directory."""
    root = tmp_path_factory.mktemp("two_nodes")
    out = root / "out"
    args = runs.distill_args(tiny, out, max_steps=12, save_steps=4, logging_steps=4)
    procs, text = run_two_nodes(root, [args, args], "straight")
    assert [p.returncode for p in procs] == [0, 0], text
    return out, text


@pytest.mark.slow
def test_two_nodes_rank0_writes_the_run_files_every_rank_its_part(two_node_run):
    out, text = two_node_run
    assert len(list((out / "tensorboard").glob("events*"))) == 1  # global rank 0 alone (both are local rank 0)
    assert text.count("exported the student") == 1, text
    assert [p.name for p in complete_checkpoints(out)] == ["step-00000004", "step-00000008", "step-00000012"]
    for checkpoint in complete_checkpoints(out):
        assert all((checkpoint / name).is_file() for name in RANK_FILES), sorted(p.name for p in checkpoint.iterdir())
    assert (out / "run_config.json").is_file() and (out / "student" / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.extended
def test_sigterm_to_one_node_checkpoints_both_and_resume_equals_the_straight_run(tiny, two_node_run, tmp_path):
    straight, _ = two_node_run
    out = tmp_path / "out"
    args = runs.distill_args(tiny, out, max_steps=12, save_steps=4, logging_steps=1)
    script = tmp_path / "slow_distill.py"
    script.write_text(SLOW_SCRIPT.format(script=str(REPO / "launch" / "distill.py")))
    logs = [tmp_path / f"stopped-node{n}.log" for n in range(2)]
    procs = [start(cmd, log) for cmd, log in zip(torchrun_cmds(str(script), [args, args]), logs, strict=True)]
    wait_until_training(out, procs, logs)
    # Node 0's agent only. (Signalled, node 1's agent would leave node 0's waiting up to 300 s in torchrun's exit
    # barrier after its rank has saved and exited 0: torchrun's behaviour, not this package's.)
    os.kill(procs[0].pid, signal.SIGTERM)
    wait_all_gone(procs, logs, timeout=60)
    text = tail(logs)
    saved = complete_checkpoints(out)
    assert saved and int(saved[-1].name.split("-")[1]) < 12, text
    assert all((saved[-1] / name).is_file() for name in RANK_FILES), sorted(p.name for p in saved[-1].iterdir())
    assert "continue with --resume auto" in text and not (out / "student").exists(), text

    procs, text = run_two_nodes(tmp_path, [args + ["--resume=auto"]] * 2, "resumed")
    assert [p.returncode for p in procs] == [0, 0], text
    runs.assert_same_weights(straight / "student", out / "student")


@pytest.mark.slow
def test_a_node_local_output_dir_is_an_error_at_the_first_checkpoint(tiny, tmp_path):
    """Each node given its own directory (as a node-local path would be): exit 2 on both ranks, nothing marked."""
    dirs = [tmp_path / "node0", tmp_path / "node1"]
    args = [runs.distill_args(tiny, d, max_steps=8, save_steps=2, logging_steps=2) for d in dirs]
    # the wait for a lagging shared filesystem (30 s by default) shortened: these directories never meet
    procs, text = run_two_nodes(tmp_path, args, "local", env={"DISTILL_SHARED_FS_WAIT_S": "1"})
    assert all(p.returncode != 0 for p in procs), text
    assert len(re.findall(r"exitcode\s+:\s*2 \(pid", text)) == 2, text  # both ranks
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert errors and all("--output_dir" in e and "shared" in e and "rng-rank00001.pt" in e for e in errors), text
    assert all("DISTILL_SHARED_FS_WAIT_S=1 s" in e for e in errors), text
    assert not complete_checkpoints(dirs[0]) and not complete_checkpoints(dirs[1])
    # node 1's directory shows what a rank other than 0 writes: its checkpoint part and nothing else
    assert sorted(p.relative_to(dirs[1]).name for p in dirs[1].rglob("*") if p.is_file()) == [
        "rng-rank00001.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


# --------------------------------------------------------------------------- the watch itself (fast)
CHILD = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(60)'])"


def _child_of(parent: subprocess.Popen) -> int:
    deadline = time.time() + 20
    while time.time() < deadline:
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    pytest.fail("the child did not start")


@pytest.mark.parametrize("name, watched", [("torchrun", True), ("deepspeed.launcher.launch", True),
                                           ("my_wrapper", False)])
def test_a_rank_watches_only_the_launchers_above_it(name, watched):
    """The chain stops at the first process that is not a launcher; a launcher gone (a zombie too) is seen."""
    from distill.distributed import LauncherWatch, launcher_chain

    parent = subprocess.Popen([sys.executable, "-c", CHILD, name], start_new_session=True, env=cpu_env())
    try:
        chain = launcher_chain(_child_of(parent))
        assert [(p.pid, p.name) for p in chain] == ([(parent.pid, name)] if watched else [])
        watch = LauncherWatch(chain, interval=0)
        assert watch.gone() is None
        os.kill(parent.pid, signal.SIGKILL)  # not reaped yet: a zombie is gone too
        time.sleep(0.2)
        assert watch.gone() == (chain[0] if watched else None)
    finally:
        kill([parent])
