"""Atomic file I/O, the one place for it: write to a temporary name beside the target, fsync, rename, fsync the
directory; a reader sees the old content or all of the new one, never a half-written file.

    atomic_write_json(path, obj); digest = atomic_write_bytes(path, chunks); fsync_tree(directory)
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterable

__all__ = ["fsync_dir", "fsync_tree", "create_temporary", "atomic_write_bytes", "atomic_write_json", "file_sha256"]


def fsync_dir(directory: Path) -> None:
    """Make renames and unlinks in `directory` durable (where the platform allows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on this platform / filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def create_temporary(path: Path) -> tuple[int, str]:
    """A new, empty `.NAME.<random>.tmp` next to `path`: (fd, its path).

    Unlike tempfile.mkstemp (always 0600), it gets the permissions of any new file (0666 less
    the umask), so the renamed shard or manifest is readable by whoever reads the directory.
    """
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {path}")


def atomic_write_bytes(path: str | os.PathLike, chunks: Iterable[bytes | memoryview]) -> str:
    """Write `chunks` to `path` atomically; return the sha256 hex digest of the bytes.

    The data go to a temporary file in the same directory, are fsynced, then renamed over
    `path`, so `path` holds either its old content or all of the new one.
    """
    path = Path(path)
    digest = hashlib.sha256()
    fd, tmp = create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                digest.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return digest.hexdigest()


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8")
    atomic_write_bytes(path, [data])


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read `block` bytes at a time into one buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(block)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def fsync_tree(root: Path) -> list[str]:
    """fsync every file and folder under `root` (and it): a power loss after a rename keeps them. Returns the
    files' paths relative to `root`, sorted."""
    root = Path(root)
    files = []
    for p in sorted(root.rglob("*")):
        if p.is_dir():
            fsync_dir(p)
        elif p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            files.append(p.relative_to(root).as_posix())
    fsync_dir(root)
    return files
