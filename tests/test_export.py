"""distill.export's command (`distill-export`, tools/export_student.py) and the thin scripts' hand-over to the package.

The export itself, from real DeepSpeed checkpoints, is tested in test_distill_run.py (slow).
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO

from distill.export import EXPORT_MARKER, main


@pytest.mark.parametrize("script, words", [
    ("tools/export_student.py", ["--output_dir", "--student_config", "newest complete checkpoint"]),
    ("tools/demo_table.py", ["--student", "--teacher", "--random_init_seed"]),
])
def test_thin_scripts_run_the_package_command(script, words):
    proc = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert all(w in proc.stdout for w in words)


def test_export_refuses_what_is_not_a_complete_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step-00000002").mkdir(parents=True)  # no COMPLETE marker
    assert main([str(run_dir), "--output_dir", str(tmp_path / "out")]) == 2
    assert f"error: {run_dir} has no complete checkpoint" in capsys.readouterr().err
    assert main([str(run_dir / "checkpoints" / "step-00000002"), "--output_dir", str(tmp_path / "out")]) == 2
    assert "is not a complete checkpoint (no COMPLETE marker); export an earlier one" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        main([str(run_dir)])  # --out is required
    assert exit_info.value.code == 2


# --------------------------------------------------------------------------- the export target
def _make_run(run_dir, tokenizer_dir, steps=(2,)):
    """A run directory as distill leaves it: student_config/ and complete stage-0 checkpoints (one per step)."""
    import dataclasses

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from distill import checkpoint as ckpt
    from distill.export import save_student_skeleton

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    run_dir.mkdir(parents=True)
    save_student_skeleton(BertModel(config), tok, run_dir / "student_config")
    for step in steps:
        torch.manual_seed(step)
        tag = ckpt.checkpoints_dir(run_dir) / ckpt.tag_for_step(step)
        tag.mkdir(parents=True)
        torch.save({"module": BertModel(config).state_dict()}, tag / "mp_rank_00_model_states.pt")
        ckpt.mark_complete(tag, {"state": dataclasses.asdict(ckpt.TrainState(step=step)), "config": {},
                                 **ckpt.file_records(tag)})
    return run_dir


@pytest.fixture
def run_dir(tmp_path, tiny_tokenizer_dir):
    return _make_run(tmp_path / "run", tiny_tokenizer_dir, steps=(2, 4))


def _weights(directory):
    from transformers import AutoModel

    return AutoModel.from_pretrained(directory).state_dict()


def _tree(directory):
    """{relative path: bytes} of every file under directory."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_export_writes_a_student_and_its_marker(run_dir, tmp_path, capsys):
    import json

    import torch

    out = tmp_path / "student"
    assert main([str(run_dir), "--output_dir", str(out)]) == 0
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["checkpoint"] == str((run_dir / "checkpoints" / "step-00000004").resolve())
    saved = torch.load(run_dir / "checkpoints" / "step-00000004" / "mp_rank_00_model_states.pt")["module"]
    assert all(torch.equal(v, saved[k]) for k, v in _weights(out).items() if k in saved)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_export_refuses_a_directory_holding_other_files_before_any_work(run_dir, tmp_path, capsys, monkeypatch):
    import distill.export as export

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "sub").mkdir()
    before = _tree(out)
    monkeypatch.setattr(export, "checkpoint_state_dict", lambda *a: pytest.fail("weights rebuilt before the check"))
    assert main([str(run_dir), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output_dir {out} holds files this export did not write (notes.txt, sub)")
    assert "choose another --output_dir" in err
    assert _tree(out) == before and sorted(p.name for p in out.iterdir()) == ["notes.txt", "sub"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "run"]


def test_export_refuses_a_file_at_the_target(run_dir, tmp_path, capsys):
    out = tmp_path / "student"
    out.write_text("not a directory")
    assert main([str(run_dir), "--output_dir", str(out)]) == 2
    assert f"error: --output_dir {out} is a file" in capsys.readouterr().err
    assert out.read_text() == "not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "student"]  # no .student.old


@pytest.mark.parametrize("atomic_swap", [True, False], ids=["renameat2", "rename-aside"])
def test_export_replaces_an_earlier_export_and_fills_an_empty_directory(run_dir, tmp_path, capsys, monkeypatch,
                                                                        atomic_swap):
    import torch

    import distill.export as export

    if not atomic_swap:
        monkeypatch.setattr(export, "_exchange", lambda a, b: False)

    out = tmp_path / "student"
    out.mkdir()  # empty: taken
    assert main([str(run_dir / "checkpoints" / "step-00000002"), "--output_dir", str(out)]) == 0
    assert main([str(run_dir), "--output_dir", str(out)]) == 0  # an earlier export: replaced by step 4's
    saved = torch.load(run_dir / "checkpoints" / "step-00000004" / "mp_rank_00_model_states.pt")["module"]
    assert all(torch.equal(v, saved[k]) for k, v in _weights(out).items() if k in saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "student"]
    (out / "README.md").write_text("my model card")  # the user's file in an earlier export: kept, refused
    assert main([str(run_dir), "--output_dir", str(out)]) == 2
    assert "holds files this export did not write (README.md)" in capsys.readouterr().err
    assert (out / "README.md").read_text() == "my model card"


def test_export_follows_the_umask(run_dir, tmp_path):
    import os
    import stat

    out = tmp_path / "student"
    old = os.umask(0o022)
    try:
        assert main([str(run_dir), "--output_dir", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE((run_dir / "student_config").stat().st_mode) == 0o755


def test_a_full_disk_leaves_the_earlier_export(run_dir, tmp_path, capsys, monkeypatch):
    import errno

    from transformers import PreTrainedModel

    out = tmp_path / "student"
    assert main([str(run_dir / "checkpoints" / "step-00000002"), "--output_dir", str(out)]) == 0
    before = _tree(out)

    def full(self, directory, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    capsys.readouterr()
    assert main([str(run_dir), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on device writing the export of")
    assert f"{out} was left as it was" in err
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "student"]


def test_export_names_a_missing_path_and_an_unfinished_run(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main([str(missing), "--output_dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: {missing}: no such checkpoint or run directory\n"
    (tmp_path / "run" / "checkpoints" / "step-00000002").mkdir(parents=True)
    assert main([str(tmp_path / "run"), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'run'} has no complete checkpoint" in err and "step-00000002" in err
    (tmp_path / "other").mkdir()
    assert main([str(tmp_path / "other"), "--output_dir", str(tmp_path / "out")]) == 2
    assert "is neither a checkpoint directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_names_a_damaged_checkpoint_and_the_previous_one(run_dir, tmp_path, capsys):
    """A model file shorter than its COMPLETE record says (or a damaged marker) is named, not exported."""
    import json

    from distill import checkpoint as ckpt
    from distill.export import main

    newest = ckpt.list_checkpoints(run_dir)[-1]
    model = newest / "mp_rank_00_model_states.pt"
    record = json.loads((newest / ckpt.COMPLETE).read_text())
    record["files"] = {model.name: model.stat().st_size}
    (newest / ckpt.COMPLETE).write_text(json.dumps(record))
    model.write_bytes(model.read_bytes()[:100])  # truncated under its marker
    for source in (run_dir, newest):
        out = tmp_path / f"out-{source.name}"
        assert main([str(source), "--output_dir", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and model.name in err and "step-00000002" in err, err
        assert not out.exists()
    (newest / ckpt.COMPLETE).write_text("")  # an empty marker
    assert main([str(newest), "--output_dir", str(tmp_path / "o")]) == 2
    assert "is empty" in capsys.readouterr().err


# --------------------------------------------------------------------------- targets inside a run's own files
def _no_work(monkeypatch):
    import distill.export as export

    monkeypatch.setattr(export, "checkpoint_state_dict", lambda *a: pytest.fail("weights rebuilt before the check"))


def test_export_refuses_a_target_inside_checkpoints_before_any_work(run_dir, tmp_path, capsys, monkeypatch):
    """Rotation and --overwrite_output_dir delete what is in checkpoints/: an export there would be lost."""
    _no_work(monkeypatch)
    checkpoints = run_dir / "checkpoints"
    (run_dir / "run_config.json").write_text("{}")
    other = tmp_path / "ckpts"  # checkpoints of another layout: known by their step-N folders
    (other / "step-00000002").mkdir(parents=True)
    for source, out, inside in [
        (run_dir, checkpoints / "student", checkpoints),
        (run_dir, checkpoints / "step-00000004" / "student", checkpoints / "step-00000004"),
        (run_dir, checkpoints, checkpoints),
        (checkpoints / "step-00000002", checkpoints / "abandoned-x" / "student", checkpoints),
        (run_dir, other / "student", other),
    ]:
        before = _tree(run_dir)
        assert main([str(source), "--output_dir", str(out)]) == 2, out
        err = capsys.readouterr().err
        assert err.startswith(f"error: --output_dir {out} ") and f"{inside}" in err, err
        assert "choose an --output_dir outside" in err, err
        assert "\n" == err[-1] and err.count("\n") == 1
        assert _tree(run_dir) == before and not (checkpoints / "student").exists()
        assert not (checkpoints / "abandoned-x").exists() and not (other / "student").exists()


def test_the_runs_export_dir_may_not_be_inside_its_own_files(tmp_path):
    """The trainer's check, before a fresh run has written anything (so nothing marks its folders yet)."""
    from distill.export import check_export_target

    run = tmp_path / "runs" / "minilm"
    for target in (run / "checkpoints" / "student", run / "tensorboard", run / "student_config" / "x", run,
                   tmp_path / "runs", run / "run_config.json"):
        with pytest.raises(ValueError, match=r"^--export_dir .* choose an --export_dir outside") as info:
            check_export_target(target, "--export_dir", output_dir=run)
        assert str(target) in str(info.value)
    for fine in (run / "student", tmp_path / "runs" / "minilm-student", tmp_path / "elsewhere" / "student"):
        check_export_target(fine, "--export_dir", output_dir=run)
    assert not run.exists()


# --------------------------------------------------------------------------- a full disk, a missing skeleton
@pytest.mark.parametrize("where", ["marker", "safetensors"])
def test_a_full_disk_names_the_directory_and_its_free_space(run_dir, tmp_path, capsys, monkeypatch, where):
    """A fresh export that fills the disk: `error:`, the directory and its free space; nothing left behind."""
    import errno

    import distill.export as export

    if where == "marker":
        def full(path, obj):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        monkeypatch.setattr(export, "atomic_write_json", full)
    else:  # safetensors reports a full disk as its own error type, not as an OSError
        import transformers.modeling_utils as mu

        class SafetensorError(Exception):
            pass

        def full(*a, **k):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        monkeypatch.setattr(mu, "safe_save_file", full)
    out = tmp_path / "new" / "deeper" / "student"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([str(run_dir), "--output_dir", str(out)]) == 2
    (err,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]  # one line
    assert err.startswith(f"error: no space left on device writing the export of {run_dir / 'checkpoints'}"), err
    assert f"{out} was not written" in err and f"{tmp_path} has " in err and " free" in err, err
    assert "choose another --output_dir" in err and ".tmp" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial export, no folder made for it


def test_a_missing_student_config_is_named_not_looked_up_on_the_hub(run_dir, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "student_config"
    assert main([str(run_dir), "--output_dir", str(tmp_path / "o"), "--student_config", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: --student_config {missing}: no such directory\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(run_dir), "--output_dir", str(tmp_path / "o"), "--student_config", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --student_config {empty} has no config.json: give the run's") and "repo" not in err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- a student the export cannot rebuild
def test_a_student_that_cannot_be_exported_is_refused_before_anything_is_written(tmp_path, tiny_tokenizer_dir):
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertModel

    from distill.export import check_student_exportable, save_student_skeleton

    config = BertConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    check_student_exportable(BertModel(config))  # what create_student gives

    class Custom(torch.nn.Module):  # a Hugging Face config, but weights AutoModel would not name the same
        def __init__(self):
            super().__init__()
            self.config = config
            self.encoder = torch.nn.Linear(16, 16)

    for student, words in [(torch.nn.Linear(4, 4), "not a Hugging Face model"),
                           (Custom(), "AutoModel.from_config"), (BertForMaskedLM(config), "base_model")]:
        with pytest.raises(ValueError, match="cannot be exported") as info:
            check_student_exportable(student)
        assert words in str(info.value), info.value
        with pytest.raises(ValueError, match="cannot be exported"):
            save_student_skeleton(student, tiny_tokenizer_dir, tmp_path / "student_config")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
