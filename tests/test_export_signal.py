"""A SIGTERM or Ctrl-C during the final export lets the export finish: the run ends complete, exit 0."""
from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest

from distill import export, trainer


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_during_the_export_waits_for_it(tmp_path, monkeypatch, capsys, sig):
    written = []

    def export_checkpoint(final, export_dir, **kwargs):
        os.kill(os.getpid(), sig)  # arrives halfway through the export
        export_dir.mkdir(parents=True)
        (export_dir / "config.json").write_text("{}")
        written.append(export_dir)

    monkeypatch.setattr(export, "export_checkpoint", export_checkpoint)
    monkeypatch.setattr(trainer.dist, "barrier", lambda: None)
    cfg = SimpleNamespace(output_dir=str(tmp_path), export_dir=None, export_format="hf", embedding_projection="drop")
    before = signal.getsignal(sig)
    assert trainer.export_student(cfg, tmp_path / "checkpoints" / "step-00000001", 0) == tmp_path / "student"
    assert written == [tmp_path / "student"] and (tmp_path / "student" / "config.json").is_file()
    assert f"{sig.name} received during the export: the export finished first" in capsys.readouterr().out
    assert signal.getsignal(sig) is before  # the handler is back
