"""Ranks and their launchers: a rank stops (saving a checkpoint) when its launcher is gone.

- **The launcher is watched.** A signal sent to the `deepspeed` command's PID alone kills it
  without reaching the ranks (DeepSpeed's runner forwards nothing on a single node, and its
  `launch.py` child, which would, is not signalled), so the ranks would train on, orphaned. Each
  rank records at start the launcher processes above it (`deepspeed`'s runner and `launch.py`,
  `torchrun`: see `LAUNCHERS`), and `RunGuard` treats the death of any of them as a stop request:
  every rank finishes the step, saves and exits 0, whatever signal ended the launcher. Only
  launchers are watched, never a shell: `nohup python launch/distill.py &` survives a logout.
  Linux (`/proc`) only; elsewhere nothing is watched.
- Why not `prctl(PR_SET_PDEATHSIG)`: it fires when the *thread* that started the rank exits, which
  could stop a healthy run, and only covers the direct parent (`launch.py`, which outlives the
  `deepspeed` runner). Its signal would only set the flag that `RunGuard` reads at the same point.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Program or module names (argv[0], the script, or `-m MODULE`) of the launchers whose death stops a run.
LAUNCHERS = frozenset({"deepspeed", "ds", "torchrun", "deepspeed.launcher.runner", "deepspeed.launcher.launch",
                       "torch.distributed.run", "torch.distributed.launch"})
WATCH_INTERVAL_S = 1.0  # how often RunGuard looks at the launchers (a few /proc reads)


# --------------------------------------------------------------------------- the launchers
@dataclass(frozen=True)
class Launcher:
    pid: int
    start: str  # start time from /proc/PID/stat: a PID reused by another process is not taken for this one
    name: str


def _proc_stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of process `pid` from /proc; None when it is gone or there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name in parentheses may hold spaces
    return fields[0], int(fields[1]), fields[19]


def _launcher_name(pid: int) -> str | None:
    """The launcher `pid` runs (one of LAUNCHERS), or None."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for arg in argv[:6]:  # the interpreter, its options, then the program or `-m` module
        name = os.path.basename(arg.decode(errors="replace"))
        if name in LAUNCHERS:
            return name
    return None


def launcher_chain(pid: int | None = None) -> list[Launcher]:
    """The launchers above process `pid` (default: this one), nearest first, up to the first non-launcher."""
    chain = []
    stat = _proc_stat(os.getpid() if pid is None else pid)
    while stat is not None and stat[1] > 1:
        parent = stat[1]
        name, stat = _launcher_name(parent), _proc_stat(parent)
        if name is None or stat is None:
            break
        chain.append(Launcher(parent, stat[2], name))
    return chain


def is_alive(launcher: Launcher) -> bool:
    """The process is still there: not gone, not a zombie waiting to be reaped, and not a reused PID."""
    stat = _proc_stat(launcher.pid)
    return stat is not None and stat[0] not in "ZXx" and stat[2] == launcher.start


class LauncherWatch:
    """The launchers recorded when the rank started; `gone()` names the first that is no longer running."""

    def __init__(self, chain: list[Launcher], interval: float = WATCH_INTERVAL_S):
        self.chain = chain
        self.interval = interval
        self._next = 0.0

    def gone(self) -> Launcher | None:
        """Looks at most once per `interval`; None while every launcher runs."""
        now = time.monotonic()
        if not self.chain or now < self._next:
            return None
        self._next = now + self.interval
        return next((p for p in self.chain if not is_alive(p)), None)


_watch = LauncherWatch([])


def watch_launchers() -> LauncherWatch:
    """Record this rank's launchers (once, at start: later the chain may already be broken)."""
    global _watch
    if not _watch.chain:
        _watch = LauncherWatch(launcher_chain())
    return _watch


def launcher_watch() -> LauncherWatch:
    """The watch `watch_launchers` recorded (an empty one before it ran)."""
    return _watch


# --------------------------------------------------------------------------- the process group
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, int, Any]:
    """Join (or create, for a plain `python` run) the process group; return rank, world, local rank, device."""
    import deepspeed
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ:  # a plain single-process run: be rank 0 of 1
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available() and _accelerator_is_cuda():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    watch_launchers()  # now, while the chain of launchers above this rank is whole
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", auto_mpi_discovery=False)
    return dist.get_rank(), dist.get_world_size(), local_rank, device


def _accelerator_is_cuda() -> bool:
    """DeepSpeed's accelerator is CUDA. Under DS_ACCELERATOR=cpu its launcher still sets CUDA_VISIBLE_DEVICES=0,1,...
    for the ranks, so on a GPU node CPU ranks see GPUs: they train on the CPU with gloo all the same."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cuda"
