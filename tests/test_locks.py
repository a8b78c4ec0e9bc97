"""One run per directory: a second run into a directory in use is refused, naming the first; a dead run's lock
is taken over."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import test_distill_run as runs
from helpers import REPO, cpu_env

from distill.locks import LOCK_NAME, DirectoryLock, LockedError

tiny = runs.tiny  # the module-scoped fixture: a tiny teacher and its shards

HOLD = """
import sys, time
from distill.locks import DirectoryLock
lock = DirectoryLock(sys.argv[1], "distillation run").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def hold(directory):
    """A child process holding `directory`'s lock, as a running run does."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=REPO, stdout=subprocess.PIPE,
                             text=True, env=cpu_env())
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_held_directory_is_refused_naming_the_holder_and_a_released_one_is_free(tmp_path):
    first = DirectoryLock(tmp_path / "run", "distillation run").acquire()
    second = DirectoryLock(tmp_path / "run", "distillation run")
    with pytest.raises(LockedError, match=rf"in use by distillation run \(pid {os.getpid()} on host "):
        second.acquire()
    assert second.holder()["pid"] == os.getpid()
    first.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    assert second.holder() is None
    with second:
        assert second.recovered_line() is None  # released properly: nothing to recover


def test_the_lock_of_a_killed_process_is_taken_over_with_a_note(tmp_path):
    child = hold(tmp_path / "run")
    with pytest.raises(LockedError, match=f"pid {child.pid}"):
        DirectoryLock(tmp_path / "run", "x").check_free()
    child.kill()  # kill -9: the lock file stays, the kernel drops the lock
    child.wait()
    assert (tmp_path / "run" / LOCK_NAME).is_file()
    lock = DirectoryLock(tmp_path / "run", "distillation run").acquire()
    try:
        assert f"pid {child.pid}" in lock.recovered_line() and "no longer running" in lock.recovered_line()
        assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        lock.release()


def test_check_free_writes_nothing(tmp_path):
    DirectoryLock(tmp_path / "absent", "x").check_free()
    assert not (tmp_path / "absent").exists()


@pytest.mark.slow
def test_a_second_run_into_a_directory_in_use_exits_2_naming_the_first(tiny, tmp_path):
    out = tmp_path / "run"
    first = runs.run_python(runs.distill_args(tiny, out, max_steps=2, save_steps=1))
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    child = hold(out)  # the first run, still working
    try:
        for extra in (["--resume=auto"], ["--overwrite_output_dir"]):
            second = runs.run_python(runs.distill_args(tiny, out, max_steps=3, save_steps=1) + extra)
            assert second.returncode == 2, second.stderr[-3000:]
            assert f"is in use by distillation run (pid {child.pid} on host" in second.stderr, second.stderr[-3000:]
    finally:
        child.kill()
        child.wait()
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != LOCK_NAME}
    assert after == {p: t for p, t in before.items() if p.name != LOCK_NAME}  # nothing of the first run touched


def test_a_pretokenize_build_into_a_directory_in_use_is_refused_before_reading_anything(tmp_path, tiny_tokenizer_dir,
                                                                                       capsys):
    import distill.pretokenize as P

    (tmp_path / "a.txt").write_text("the water is long\n\nmake it so\n", encoding="utf-8")
    args = ["--tokenizer_name", str(tiny_tokenizer_dir), "--input", str(tmp_path / "a.txt"), "--output_dir",
            str(tmp_path / "out"), "--num-workers", "1", "--no-progress"]
    child = hold(tmp_path / "out")
    try:
        for extra in ([], ["--overwrite"]):
            assert P.main(args + extra) == 2
            assert f"is in use by distillation run (pid {child.pid} on host" in capsys.readouterr().err
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        child.kill()
        child.wait()
    assert P.main(args) == 0  # the holder died: its lock is taken over
    assert "no longer running; its lock was taken over" in capsys.readouterr().out
    assert (tmp_path / "out" / "manifest.json").is_file() and not (tmp_path / "out" / LOCK_NAME).exists()


def test_a_failed_pretokenize_build_leaves_no_directory_and_no_lock(tmp_path, tiny_tokenizer_dir):
    import distill.pretokenize as P

    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    assert P.main(["--tokenizer_name", str(tiny_tokenizer_dir), "--input", str(tmp_path / "empty.txt"), "--output_dir",
                   str(tmp_path / "out"), "--num-workers", "1", "--no-progress"]) == 2
    assert not (tmp_path / "out").exists()
