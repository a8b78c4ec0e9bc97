"""Checkpoint files without DeepSpeed: atomic saves, the COMPLETE record, another future, the output directory."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from distill import checkpoint as ckpt
from distill import trainer
from distill.checkpoint import CheckpointError, TrainState
from distill.config import ConfigError, DistillConfig
from distill.errors import DivergedError
from distill.export import EXPORT_MARKER


class FakeEngine:
    """What save_checkpoint uses of a DeepSpeed engine: the module and save_checkpoint (one model file)."""

    def __init__(self, value: float = 1.0, fail: OSError | None = None):
        self.module = torch.nn.Linear(4, 4)
        torch.nn.init.constant_(self.module.weight, value)
        self.fail = fail
        self.saved_tags: list[str] = []

    def save_checkpoint(self, save_dir, tag, client_state, save_latest=True):
        assert not save_latest  # our pointer is written after the rename
        self.saved_tags.append(tag)
        directory = Path(save_dir) / tag
        directory.mkdir(parents=True)
        (directory / "mp_rank_00_model_states.pt").write_bytes(b"x" * 100)
        if self.fail is not None:
            (directory / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"partial")
            raise self.fail
        (directory / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"y" * 200)


def config(out: Path, **kw) -> DistillConfig:
    return DistillConfig(output_dir=str(out), **kw)  # the default teacher (a hub name: not loaded here), no data


def save(out: Path, step: int, engine: FakeEngine | None = None, **kw) -> Path:
    return ckpt.save_checkpoint(engine or FakeEngine(), config(out, **kw), TrainState(step=step), rank=0)


def contents(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- saving
def test_a_save_is_renamed_into_place_complete_with_its_file_sizes(tmp_path):
    path = save(tmp_path, 3)
    assert path == tmp_path / "checkpoints" / "step-00000003"
    record = ckpt.verify_checkpoint(path)
    assert record["state"]["step"] == 3
    assert record["files"]["mp_rank_00_model_states.pt"] == 100 and "rng-rank00000.pt" in record["files"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-00000003"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []


def test_a_failed_resave_leaves_the_old_checkpoint_whole_and_marked(tmp_path):
    """Re-saving an existing step writes elsewhere: a failure (or a kill) mid-save never touches the old one."""
    old = save(tmp_path, 3)
    before = contents(old)
    with pytest.raises(CheckpointError):
        save(tmp_path, 3, FakeEngine(fail=OSError(errno.EIO, "I/O error")))
    assert contents(old) == before
    ckpt.verify_checkpoint(old)


def test_a_full_disk_is_named_with_the_last_good_checkpoint_and_nothing_is_marked(tmp_path):
    good = save(tmp_path, 1)
    with pytest.raises(CheckpointError) as e:
        save(tmp_path, 2, FakeEngine(fail=OSError(errno.ENOSPC, "No space left on device")))
    assert "no space left on device while saving checkpoint step-00000002" in str(e.value)
    assert f"the last good checkpoint is {good}" in str(e.value)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step-00000001"]  # the temporary one removed
    assert ckpt.list_checkpoints(tmp_path) == [good]


class FillingEngine(FakeEngine):
    """Writes its optimizer states with torch.save, as DeepSpeed does: 4 MB, more than the disk has left."""

    def save_checkpoint(self, save_dir, tag, client_state, save_latest=True):
        directory = Path(save_dir) / tag
        directory.mkdir(parents=True)
        torch.save({"exp_avg": torch.zeros(1 << 20)}, directory / "zero_pp_rank_0_mp_rank_00_optim_states.pt")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount rights: skipped elsewhere)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk_is_named_as_such(small_disk):
    good = save(small_disk, 1)
    with pytest.raises(CheckpointError) as e:
        save(small_disk, 2, FillingEngine())
    assert "no space left on device while saving checkpoint step-00000002" in str(e.value)
    assert f"the last good checkpoint is {good}" in str(e.value)
    assert sorted(p.name for p in (small_disk / "checkpoints").iterdir() if p.is_dir()) == ["step-00000001"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30])
def test_nonfinite_or_diverged_weights_are_never_saved(tmp_path, value):
    good = save(tmp_path, 1)
    with pytest.raises(CheckpointError) as e:
        save(tmp_path, 2, FakeEngine(value=value))
    assert "weights are not finite" in str(e.value) and str(good) in str(e.value)
    assert ckpt.list_checkpoints(tmp_path, complete_only=False) == [good]


def test_resuming_an_older_checkpoint_moves_the_newer_ones_aside_at_its_first_save(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step)
    root = tmp_path / "checkpoints"
    old2, old3 = contents(root / "step-00000002"), contents(root / "step-00000003")
    # the resumed run (from step 1) saves step 2: old 2 and 3 are another future
    engine = FakeEngine(value=0.5)
    save(tmp_path, 2, engine)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000001", "step-00000002"]
    assert contents(root / "step-00000002") != old2
    aside = [p for p in root.iterdir() if p.name.startswith("abandoned-")]
    assert len(aside) == 1
    assert contents(aside[0] / "step-00000002") == old2 and contents(aside[0] / "step-00000003") == old3
    assert ckpt.resolve_resume("auto", tmp_path) == root / "step-00000002"
    assert (root / "latest").read_text() == "step-00000002"
    # rotation counts this future only and never touches the abandoned folder
    save(tmp_path, 3, save_total_limit=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000003"]
    assert contents(aside[0] / "step-00000003") == old3


def test_the_next_save_removes_leftovers_of_a_killed_save(tmp_path):
    save(tmp_path, 1)
    leftover = tmp_path / "checkpoints" / ".step-00000002.tmp-0123abcd"
    leftover.mkdir()
    (leftover / "mp_rank_00_model_states.pt").write_bytes(b"half")
    assert ckpt.resolve_resume("auto", tmp_path).name == "step-00000001"
    save(tmp_path, 2)
    assert not leftover.exists()


# --------------------------------------------------------------------------- damaged COMPLETE records
@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "COMPLETE").write_text(""), "COMPLETE is empty"),
    (lambda p: (p / "COMPLETE").write_text("{not json"), "COMPLETE cannot be read as JSON"),
    (lambda p: (p / "COMPLETE").write_text('{"config": {}}'), "its COMPLETE marker lacks state"),
    (lambda p: (p / "COMPLETE").write_text("[1, 2]"), "not a JSON object"),
    (lambda p: (p / "mp_rank_00_model_states.pt").write_bytes(b"x" * 10),
     "mp_rank_00_model_states.pt holds 10 bytes, not the 100 its COMPLETE marker records"),
    (lambda p: (p / "rng-rank00000.pt").unlink(), "rng-rank00000.pt is missing"),
    (lambda p: flip_a_byte(p / "mp_rank_00_model_states.pt"),
     "mp_rank_00_model_states.pt does not match the sha256 its COMPLETE marker records"),
])
def test_a_damaged_checkpoint_names_the_file_and_the_previous_one(tmp_path, damage, message):
    first = save(tmp_path, 1)
    second = save(tmp_path, 2)
    damage(second)
    for call in (lambda: ckpt.resolve_resume("auto", tmp_path), lambda: ckpt.resolve_resume(str(second), tmp_path),
                 lambda: ckpt.newest_checkpoint(tmp_path), lambda: ckpt.resolve_resume(str(tmp_path), "elsewhere")):
        with pytest.raises(CheckpointError) as e:
            call()
        assert message in str(e.value) and str(second) in str(e.value)
        assert f"the previous complete checkpoint is {first}" in str(e.value)


def flip_a_byte(file: Path, offset: int | None = None) -> None:
    """Damage `file` the way a bad disk or a stray write does: one bit of one byte, the size unchanged."""
    data = bytearray(file.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x40
    file.write_bytes(bytes(data))


def test_the_complete_record_holds_every_files_sha256(tmp_path):
    import hashlib

    path = save(tmp_path, 1)
    record = ckpt.verify_checkpoint(path)
    assert set(record["sha256"]) == set(record["files"])
    assert record["sha256"]["mp_rank_00_model_states.pt"] == hashlib.sha256(b"x" * 100).hexdigest()


def test_a_record_without_checksums_is_accepted_with_a_note(tmp_path, capsys):
    import json

    path = save(tmp_path, 1)
    record = json.loads((path / "COMPLETE").read_text())
    del record["sha256"]
    (path / "COMPLETE").write_text(json.dumps(record))
    assert ckpt.verify_checkpoint(path)["state"]["step"] == 1
    out = capsys.readouterr().out
    assert f"note: checkpoint {path} records no checksums" in out and "only the file sizes were checked" in out
    (path / "mp_rank_00_model_states.pt").write_bytes(b"x" * 10)
    with pytest.raises(CheckpointError, match="holds 10 bytes"):  # the sizes still are
        ckpt.verify_checkpoint(path)


def test_last_good_verifies_the_checkpoint_it_calls_good(tmp_path):
    first = save(tmp_path, 1)
    second = save(tmp_path, 2)
    assert ckpt.last_good(tmp_path) == f"the last good checkpoint is {second}"
    flip_a_byte(second / "mp_rank_00_model_states.pt")
    message = ckpt.last_good(tmp_path)
    assert message.startswith(f"the last good checkpoint is {first}") and f"{second} is damaged" in message
    assert "mp_rank_00_model_states.pt does not match" in message
    flip_a_byte(first / "rng-rank00000.pt")
    message = ckpt.last_good(tmp_path)
    assert "there is no intact checkpoint" in message and str(first) in message and str(second) in message


class BertEngine(FakeEngine):
    """Saves a tiny BERT's state dict as DeepSpeed's stage-0 model file."""

    def __init__(self, bert_config):
        super().__init__()
        self.bert_config = bert_config

    def save_checkpoint(self, save_dir, tag, client_state, save_latest=True):
        from transformers import BertModel

        directory = Path(save_dir) / tag
        directory.mkdir(parents=True)
        torch.save({"module": BertModel(self.bert_config).state_dict()}, directory / "mp_rank_00_model_states.pt")


def largest_tensor_exponent_byte(file: Path) -> int:
    """The offset of the sign-and-exponent byte of a float32 amid the largest tensor of a torch.save file."""
    import struct
    import zipfile

    with zipfile.ZipFile(file) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    with open(file, "rb") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
    start = info.header_offset + 30 + name_length + extra_length
    return start + info.file_size // 8 * 4 + 3


def test_export_refuses_a_checkpoint_with_a_flipped_byte(tmp_path, tiny_tokenizer_dir, capsys):
    """A flipped exponent bit in a weight: the file still loads, and would export a student with ~1e36 weights."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from distill.export import main, save_student_skeleton

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    bert = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32)
    save_student_skeleton(BertModel(bert), tok, tmp_path / "student_config")
    first, second = save(tmp_path, 2, BertEngine(bert)), save(tmp_path, 4, BertEngine(bert))
    model_file = second / "mp_rank_00_model_states.pt"
    flip_a_byte(model_file, largest_tensor_exponent_byte(model_file))
    weights = torch.load(model_file, weights_only=False)["module"]  # loads: only the checksum tells
    assert max(w.abs().max().item() for w in weights.values() if w.is_floating_point()) > 1e30
    assert main([str(second), "--output_dir", str(tmp_path / "student")]) == 2
    err = capsys.readouterr().err
    assert f"error: {model_file} does not match the sha256" in err and f"checkpoint {second} is damaged" in err
    assert f"the previous complete checkpoint is {first}" in err
    assert not (tmp_path / "student").exists()
    assert main([str(tmp_path), "--output_dir", str(tmp_path / "student")]) == 2  # the run's newest: the same refusal
    assert f"checkpoint {second} is damaged" in capsys.readouterr().err
    assert main([str(first), "--output_dir", str(tmp_path / "student")]) == 0


# --------------------------------------------------------------------------- shapes
def test_resume_compares_resolved_values_not_spellings(tmp_path):
    from transformers import BertConfig

    teacher = BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)
    path = save(tmp_path, 1, student_hidden_size=16, student_attention_heads=2, num_relation_heads=4)  # layer None
    same = config(tmp_path, teacher_layer=3, student_hidden_size=16, student_attention_heads=2, num_relation_heads=4,
                  student_intermediate_size=32)  # 16 x the teacher's 64/32
    ckpt.check_resume_compatible(path, same, teacher)
    other = config(tmp_path, teacher_layer=2, student_hidden_size=16, student_attention_heads=2, num_relation_heads=4)
    with pytest.raises(ConfigError, match="teacher_layer: checkpoint 3, this run 2"):
        ckpt.check_resume_compatible(path, other, teacher)


# --------------------------------------------------------------------------- the output directory
def test_a_fresh_run_into_another_runs_directory_is_refused_with_the_choices(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError) as e:
        ckpt.check_output_dir(config(tmp_path))
    for choice in ("--resume auto", "a new --output_dir", "--overwrite_output_dir"):
        assert choice in str(e.value)
    ckpt.check_output_dir(config(tmp_path, resume="auto"))
    ckpt.check_output_dir(config(tmp_path, overwrite_output_dir=True))
    with pytest.raises(ConfigError, match="give one of the two"):
        ckpt.check_output_dir(config(tmp_path, overwrite_output_dir=True, resume="auto"))


def test_an_empty_or_foreign_directory_is_fine(tmp_path):
    ckpt.check_output_dir(config(tmp_path))
    (tmp_path / "notes.txt").write_text("mine")
    ckpt.check_output_dir(config(tmp_path))
    ckpt.check_output_dir(config(tmp_path / "not" / "yet"))


def test_an_output_dir_that_is_a_file_or_not_writable_is_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        ckpt.check_output_dir(config(tmp_path / "file"))
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        ckpt.check_output_dir(config(tmp_path / "file" / "below"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match="is not writable"):
        ckpt.check_output_dir(config(tmp_path / "new"))


def test_overwrite_removes_only_this_packages_files(tmp_path):
    for name in ("checkpoints/step-00000001", "student_config", "tensorboard"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "run_config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "data").mkdir()
    (tmp_path / "student").mkdir()  # not marked as an export of this package: the user's
    ckpt.clear_run_files(tmp_path, tmp_path / "student")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "notes.txt", "student"]
    (tmp_path / "student" / EXPORT_MARKER).write_text("{}")  # an export of this package
    ckpt.clear_run_files(tmp_path, tmp_path / "student")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "notes.txt"]


def test_overwrite_removes_what_a_killed_export_left(tmp_path):
    import tempfile

    left = [Path(tempfile.mkdtemp(prefix=".student.", suffix=".tmp", dir=tmp_path)),
            Path(tempfile.mkdtemp(prefix=".student.", suffix=".old", dir=tmp_path)),
            Path(tempfile.mkdtemp(prefix=".student_config.", suffix=".tmp", dir=tmp_path))]
    (tmp_path / ".studentish.tmp").mkdir()  # not a name the export makes: the user's
    (tmp_path / ".student.keep").mkdir()
    removed = ckpt.clear_run_files(tmp_path, tmp_path / "student")
    assert sorted(removed) == sorted(left)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".student.keep", ".studentish.tmp"]


# --------------------------------------------------------------------------- the step
class StepEngine:
    def __init__(self, applied: bool, value: float = 1.0, fp16: bool = False):
        self.module = torch.nn.Linear(2, 2)
        torch.nn.init.constant_(self.module.weight, value)
        self.applied, self.fp16 = applied, fp16

    def fp16_enabled(self):
        return self.fp16

    def was_step_applied(self):
        return self.applied

    def get_global_grad_norm(self):
        return float("inf") if not self.applied else 1.0


def test_steps_skipped_for_a_nonfinite_gradient_norm_count_toward_the_stop(tmp_path):
    cfg, state = config(tmp_path), TrainState(step=5)
    skipped = 0
    for _ in range(trainer.MAX_NONFINITE - 1):
        skipped = trainer._check_step(StepEngine(applied=False), state, cfg, skipped)
    assert skipped == trainer.MAX_NONFINITE - 1
    assert trainer._check_step(StepEngine(applied=True), state, cfg, skipped) == 0  # a good step resets
    assert trainer._check_step(StepEngine(applied=False, fp16=True), state, cfg, 0) == 0  # fp16 loss scaling
    with pytest.raises(DivergedError, match="^the run diverged: the gradient norm was not finite for 10 optimizer "
                                            "steps in a row"):
        trainer._check_step(StepEngine(applied=False), state, cfg, trainer.MAX_NONFINITE - 1)
    with pytest.raises(DivergedError, match="made the student's weights diverge"):
        trainer._check_step(StepEngine(applied=True, value=float("nan")), state, cfg, 0)

