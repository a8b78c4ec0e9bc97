"""distill.export's command (`distill-export`, tools/export_student.py) and the thin scripts' hand-over to the package.

The export itself, from real DeepSpeed checkpoints, is tested in test_distill_run.py (slow).
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from distill.export import main


@pytest.mark.parametrize("script, words", [
    ("tools/export_student.py", ["--out", "--student_config", "newest complete checkpoint"]),
    ("tools/demo_table.py", ["--student", "--teacher", "--random_init_seed"]),
])
def test_thin_scripts_run_the_package_command(script, words):
    proc = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert all(w in proc.stdout for w in words)


def test_export_refuses_what_is_not_a_complete_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step-00000002").mkdir(parents=True)  # no COMPLETE marker
    assert main([str(run_dir), "--out", str(tmp_path / "out")]) == 2
    assert f"error: {run_dir} has no complete checkpoint" in capsys.readouterr().err
    assert main([str(run_dir / "checkpoints" / "step-00000002"), "--out", str(tmp_path / "out")]) == 2
    assert "is not a complete checkpoint (no COMPLETE marker); export an earlier one" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        main([str(run_dir)])  # --out is required
    assert exit_info.value.code == 2
