"""One writer per directory: an exclusive lock a run holds on its output directory while it works.

    with DirectoryLock(output_dir, "distillation run").acquire():
        ...   # a second run into output_dir gets LockedError naming this one

The lock is `fcntl.flock` on `<directory>/.distill.lock`, whose content names the holder (pid, host,
command, start time). The kernel releases a flock when its process dies, kill -9 included, so a lock
file left by a dead run holds no lock: the next run takes it over and says so (`recovered`). flock
works across hosts on NFSv4 and Lustre (mounted with flock); on a file system without locking,
`acquire` raises LockedError naming it. `holder()` only looks: it tells whether a live run holds the
directory without writing anything, so a command can refuse before its own checks write a byte.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .errors import LockedError

__all__ = ["LOCK_NAME", "DirectoryLock", "LockedError"]

LOCK_NAME = ".distill.lock"


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process (it has not written its name yet)"
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return (f"{info.get('purpose', 'a run')} (pid {info.get('pid', '?')} on host {info.get('host', '?')}, "
            f"started {when}: {info.get('command', '?')})")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


class DirectoryLock:
    """The lock of `directory` for `purpose` (a few words: "distillation run", "pretokenize output")."""

    def __init__(self, directory: str | os.PathLike, purpose: str):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.purpose = purpose
        self.recovered: dict[str, Any] | None = None  # the dead holder whose lock file this one took over
        self._fd: int | None = None

    def holder(self) -> dict[str, Any] | None:
        """The live holder's record (None when nobody holds the lock); writes nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return _read(self.path) or {}
            return None
        finally:
            os.close(fd)  # closing drops the shared lock, if taken
        return None

    def check_free(self) -> None:
        """LockedError when a live process holds the directory; writes nothing."""
        info = self.holder()
        if info is not None:
            raise self._locked(info)

    def _locked(self, info: dict[str, Any] | None) -> LockedError:
        return LockedError(f"{self.directory} is in use by {_describe(info)}; wait for it to finish or stop it, "
                           f"or choose another directory (a lock of a process that has died is taken over by itself)")

    def acquire(self) -> "DirectoryLock":
        """Create the directory if needed, take the lock and write this process's record; LockedError if held."""
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise self._locked(_read(self.path)) from None
                raise LockedError(f"cannot lock {self.path} ({e.strerror}): the file system does not support "
                                  f"locks; choose a directory on a local or lock-capable file system") from e
            try:  # the file may have been removed by the holder that released it just before: lock the live one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.recovered = _read(self.path)
        record = {"purpose": self.purpose, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def recovered_line(self) -> str | None:
        """One line when this lock took over the file of a run that died holding it, else None."""
        if not self.recovered:
            return None
        return f"note: {self.directory} was locked by {_describe(self.recovered)}, which is no longer running; " \
               "its lock was taken over"

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "DirectoryLock":
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
