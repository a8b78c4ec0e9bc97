"""A shared check for the commands that write a directory: an output they cannot write is refused up front."""
from __future__ import annotations

import os
from pathlib import Path


def assert_unwritable_outputs_refused(main, args: list[str], flag: str, tmp_path: Path, capsys, monkeypatch) -> None:
    """`main([*args, PATH]) == 2` with `error: ...` naming the problem, for a file at PATH, a PATH under a file,
    and a directory that os.access calls unwritable (monkeypatched: root writes anywhere); nothing is changed."""
    (tmp_path / "file").write_text("mine")
    assert main([*args, str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {flag} {tmp_path / 'file'} is a file, not a directory")
    assert main([*args, str(tmp_path / "file" / "new")]) == 2
    assert f"{tmp_path / 'file'} is a file, not a directory" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode))
    assert main([*args, str(locked)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {flag} {locked} is not writable (permission denied)")
    assert main([*args, str(locked / "new")]) == 2
    assert f"{flag} {locked / 'new'} cannot be created: {locked} is not writable" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "mine" and list(locked.iterdir()) == []
