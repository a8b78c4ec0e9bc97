"""All ranks agree on the relation implementation (distill.kernel_check.settle_relation_spec, several ranks).

Two real CPU ranks (gloo, this file as a script, CUDA hidden) settle a relation spec while one
rank's kernel is broken: its self-check fails (distill.kernel_check.self_check replaced) or the
kernel cannot run there (distill.relations.resolve_relation_impl refusing "triton"), and "auto"
resolves to "triton" on CPU as it does on CUDA. Every case must end the same way on both ranks:
the kernel only when both checks pass, else "auto" falls back to the chunked loss on both and
"triton" raises ValueError on both (the last case goes through a command-line wrapper: both exit 2).
A rank left waiting on a collective its peer never reaches would hang: the processes are killed
after 60 s, and the gloo group times out after 30 s.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, cpu_env, free_port

from distill import kernel_check

QKV = {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}
# case -> (relation_impl, {rank: what is wrong there}); "fails": its self-check fails; "cannot run": no triton there
CASES = {
    "auto-both-pass": ("auto", {}),
    "auto-rank1-check-fails": ("auto", {1: "fails"}),
    "auto-rank0-check-fails": ("auto", {0: "fails"}),
    "auto-rank1-cannot-run": ("auto", {1: "cannot run"}),
    "triton-both-pass": ("triton", {}),
    "triton-rank1-cannot-run": ("triton", {1: "cannot run"}),
    "triton-rank0-check-fails": ("triton", {0: "fails"}),
}
LAST = ("triton", {1: "fails"})          # through the wrapper: ValueError -> exit 2


# --------------------------------------------------------------------------- the ranks (this file as a script)
def _broken_where(rank: int, broken: dict):
    """Replace the kernel's self-check and resolution so that this rank is broken as `broken` says."""
    import distill.relations as relations

    def self_check(spec, widths, device, dtype=None, teacher_dtype=None):
        ok = broken.get(rank) != "fails"
        return kernel_check.SelfCheckResult(ok, "" if ok else "the kernel's loss differs (forced on this rank)", 0.01,
                                       0.0 if ok else 1.0, 0.0, 1e-4, 1e-4, str(device), "B=2, S=144")

    def resolve(impl, device):
        if impl in ("auto", "triton") and broken.get(rank) == "cannot run":
            if impl == "auto":
                return "chunked"
            raise ValueError("relation_impl=triton cannot run here: triton is not installed (forced on this rank)")
        return "triton" if impl in ("auto", "triton") else impl

    kernel_check.self_check = self_check
    relations.resolve_relation_impl = resolve


def _settle(impl: str, rank: int, broken: dict) -> dict:
    from distill.kernel_check import settle_relation_spec
    from distill.relations import RelationSpec

    _broken_where(rank, broken)
    try:
        spec, check = settle_relation_spec(RelationSpec(4, QKV, impl), "cpu", widths=(32, 16))
    except ValueError as exc:
        return {"raised": str(exc)}
    return {"impl": spec.impl, "line": None if check is None else check.line(),
            "peers_ok": None if check is None else getattr(check, "peers_ok", True)}


def _rank_main() -> int:
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    rank = dist.get_rank()
    results = {name: _settle(impl, rank, {int(k): v for k, v in broken.items()})
               for name, (impl, broken) in CASES.items()}
    print(json.dumps(results), flush=True)
    try:                                   # as distill.cli: ValueError (ConfigError) -> `error: ...`, exit 2
        _settle_raising(*LAST, rank)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        dist.destroy_process_group()       # gloo's threads gone before the interpreter exits
    return 0


def _settle_raising(impl: str, broken: dict, rank: int) -> None:
    from distill.kernel_check import settle_relation_spec
    from distill.relations import RelationSpec

    _broken_where(rank, broken)
    settle_relation_spec(RelationSpec(4, QKV, impl), "cpu", widths=(32, 16))


# --------------------------------------------------------------------------- the test
@pytest.fixture(scope="module")
def ranks():
    env = cpu_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2", OMP_NUM_THREADS="1",
                  PYTHONPATH=os.pathsep.join([str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                                                           else [])))
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve())], cwd=REPO,
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    out = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=60)
            out.append((proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return out


@pytest.mark.slow
def test_both_ranks_settle_the_same_way(ranks):
    results = []
    for code, stdout, stderr in ranks:
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        assert lines, f"exit {code}:\n{stdout[-3000:]}\n{stderr[-3000:]}"
        results.append(json.loads(lines[-1]))
    r0, r1 = results
    assert r0["auto-both-pass"]["impl"] == r1["auto-both-pass"]["impl"] == "triton"
    assert r0["triton-both-pass"]["impl"] == r1["triton-both-pass"]["impl"] == "triton"
    for name in ("auto-rank1-check-fails", "auto-rank0-check-fails", "auto-rank1-cannot-run"):
        assert r0[name]["impl"] == r1[name]["impl"] == "chunked", (name, r0[name], r1[name])
    # the rank whose check passed says that another rank's failed; the failing one says why it failed
    passed = r0["auto-rank1-check-fails"]
    assert passed["line"].startswith("relation kernel self-check passed on cpu") and not passed["peers_ok"]
    assert "another rank's self-check failed" in passed["line"]
    assert passed["line"].endswith("training with the chunked loss instead (relation_impl=auto)")
    failed = r1["auto-rank1-check-fails"]
    assert failed["line"].startswith("relation kernel self-check FAILED on cpu")
    assert "forced on this rank" in failed["line"]
    assert "another rank" in r1["auto-rank0-check-fails"]["line"]
    assert r1["auto-rank1-cannot-run"]["line"] is None         # auto on CPU: no kernel, no check, no line
    assert "another rank" in r0["auto-rank1-cannot-run"]["line"]
    for name in ("triton-rank1-cannot-run", "triton-rank0-check-fails"):
        assert "raised" in r0[name] and "raised" in r1[name], (name, r0[name], r1[name])
    assert r1["triton-rank1-cannot-run"]["raised"].startswith("relation_impl=triton cannot run here")
    assert "on another rank" in r0["triton-rank1-cannot-run"]["raised"]
    assert "forced on this rank" in r0["triton-rank0-check-fails"]["raised"]
    assert "on another rank" in r1["triton-rank0-check-fails"]["raised"]


@pytest.mark.slow
def test_triton_with_one_failing_rank_exits_2_on_every_rank(ranks):
    for rank, (code, stdout, stderr) in enumerate(ranks):
        assert code == 2, f"rank {rank}: exit {code}\n{stdout[-2000:]}\n{stderr[-3000:]}"
        assert "error: relation_impl=triton: the fused kernel failed its self-check" in stderr, stderr[-3000:]
        assert "use relation_impl=chunked" in stderr


if __name__ == "__main__":          # one rank of `ranks`
    sys.exit(_rank_main())
