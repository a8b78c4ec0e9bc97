"""Resuming checks the checkpoint's provenance: the teacher (by content), the data (its manifest) and the window."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import save_tiny_teacher, write_shard_dir

from distill import checkpoint as ckpt
from distill.checkpoint import TrainState
from distill.cli_args import flag
from distill.config import ConfigError, DistillConfig


class FakeEngine:
    """What save_checkpoint uses of a DeepSpeed engine: the module and save_checkpoint (one model file)."""

    def __init__(self):
        self.module = torch.nn.Linear(2, 2)

    def save_checkpoint(self, save_dir, tag, client_state, save_latest=True):
        directory = Path(save_dir) / tag
        directory.mkdir(parents=True)
        torch.save({"client": client_state}, directory / "mp_rank_00_model_states.pt")


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_tokenizer_dir):
    """Two tiny teachers of one shape (other weights), a copy of the first elsewhere, two shard directories."""
    root = tmp_path_factory.mktemp("sources")
    first = save_tiny_teacher(root / "teacher", tiny_tokenizer_dir, seed=0)
    other = save_tiny_teacher(root / "other_teacher", tiny_tokenizer_dir, seed=1)
    copy = root / "elsewhere" / "teacher_copy"
    shutil.copytree(first, copy)
    data = write_shard_dir(root / "data", [[5, 6, 7, 8] * 8, [9, 10, 11] * 10])
    other_data = write_shard_dir(root / "other_data", [[12, 13, 14] * 12, [15, 16] * 9])
    return {"teacher": first, "other_teacher": other, "copy": copy, "data": data, "other_data": other_data}


def config(out: Path, sources, **kw) -> DistillConfig:
    settings = {"teacher": str(sources["teacher"]), "data": str(sources["data"]), "max_seq_len": 32, **kw}
    return DistillConfig(output_dir=str(out), resume="auto", **settings)


@pytest.fixture
def saved(tmp_path, sources):
    return ckpt.save_checkpoint(FakeEngine(), config(tmp_path, sources), TrainState(step=4), rank=0)


def refusal(tmp_path, sources, **kw) -> str:
    with pytest.raises(ConfigError) as e:
        ckpt.find_resume(config(tmp_path, sources, **kw))
    message = str(e.value)
    assert "resume with the checkpoint's settings" in message and "start a new --output_dir" in message, message
    return message


def test_the_checkpoint_records_its_teacher_data_and_window(saved, sources):
    provenance = ckpt.verify_checkpoint(saved)["provenance"]
    assert provenance["teacher"] == str(sources["teacher"]) and provenance["max_seq_len"] == 32
    assert provenance["teacher_fingerprint"] == ckpt.teacher_fingerprint(str(sources["teacher"]))
    assert provenance["data"] == str(sources["data"]) and len(provenance["data_manifest_sha256"]) == 64
    client = torch.load(saved / "mp_rank_00_model_states.pt", weights_only=False)["client"]
    assert client["provenance"] == provenance  # in DeepSpeed's client state too


def test_the_same_settings_resume(saved, tmp_path, sources):
    assert ckpt.find_resume(config(tmp_path, sources)) == saved


def test_another_teacher_of_the_same_shape_is_refused_naming_it(saved, tmp_path, sources):
    message = refusal(tmp_path, sources, teacher=str(sources["other_teacher"]))
    assert "teacher:" in message and str(sources["teacher"]) in message and str(sources["other_teacher"]) in message
    before = ckpt.teacher_fingerprint(str(sources["teacher"]))
    after = ckpt.teacher_fingerprint(str(sources["other_teacher"]))
    assert before != after and before[:16] in message and after[:16] in message
    assert "data:" not in message and "max_seq_len" not in message


def test_the_same_teacher_copied_to_another_path_resumes(saved, tmp_path, sources):
    assert ckpt.find_resume(config(tmp_path, sources, teacher=str(sources["copy"]))) == saved


def test_another_data_directory_is_refused_naming_it(saved, tmp_path, sources):
    message = refusal(tmp_path, sources, data=str(sources["other_data"]))
    assert "data: the manifest" in message and str(sources["other_data"]) in message
    assert "teacher:" not in message


def test_another_window_length_is_refused(saved, tmp_path, sources):
    message = refusal(tmp_path, sources, max_seq_len=16)
    assert "max_seq_len: checkpoint 32, this run 16" in message


def test_every_difference_is_named_at_once(saved, tmp_path, sources):
    message = refusal(tmp_path, sources, teacher=str(sources["other_teacher"]), data=str(sources["other_data"]),
                      max_seq_len=16)
    assert all(f"\n  - {field}:" in message for field in ("teacher", "data", "max_seq_len")), message


def test_a_checkpoint_without_provenance_resumes_with_a_note(saved, tmp_path, sources, capsys):
    marker = saved / ckpt.COMPLETE
    record = json.loads(marker.read_text())
    del record["provenance"]
    marker.write_text(json.dumps(record))
    assert ckpt.find_resume(config(tmp_path, sources, teacher=str(sources["other_teacher"]))) == saved
    out = capsys.readouterr().out
    assert "could not check" in out and "teacher" in out and out.count("\n") == 1, out


def test_the_teacher_fingerprint_is_cached_and_follows_changes(tmp_path, tiny_tokenizer_dir, monkeypatch):
    teacher = save_tiny_teacher(tmp_path / "t", tiny_tokenizer_dir, seed=2)
    first = ckpt.teacher_fingerprint(str(teacher))
    reads = []
    monkeypatch.setattr(ckpt, "file_sha256", lambda path: reads.append(path) or "x")
    assert ckpt.teacher_fingerprint(str(teacher)) == first and reads == []  # once per process
    monkeypatch.undo()
    (teacher / "tokenizer_config.json").write_text("{}")  # tokenizer files do not count
    assert ckpt.teacher_fingerprint(str(teacher)) == first
    weights = teacher / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later mtime, whatever the clock's grain
    assert ckpt.teacher_fingerprint(str(teacher)) != first


def test_a_hub_teacher_is_its_name_and_cached_snapshot(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: None)
    assert ckpt.teacher_fingerprint("org/model") == "hub:org/model"
    snapshot = "/cache/models--org--model/snapshots/0123abcd/config.json"
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: snapshot)
    assert ckpt.teacher_fingerprint("org/model") == "hub:org/model@0123abcd"


@pytest.mark.slow
def test_the_command_line_exits_2_naming_every_difference(saved, tmp_path, sources):
    """launch/distill.py (one process, CPU) stops before building a model: `error: ...` and exit 2."""
    import subprocess
    import sys

    from helpers import REPO, cpu_env

    args = {"teacher": sources["other_teacher"], "data": sources["other_data"], "max_seq_len": 16,
            "output_dir": tmp_path, "resume": "auto"}
    proc = subprocess.run([sys.executable, "launch/distill.py", *[f"{flag(k)}={v}" for k, v in args.items()]],
                          cwd=REPO, env=cpu_env(HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: cannot resume {saved}" in proc.stderr
    assert all(f"\n  - {field}:" in proc.stderr for field in ("teacher", "data", "max_seq_len")), proc.stderr
    assert f"--teacher {sources['teacher']} --data {sources['data']} --max_seq_length 32" in proc.stderr
    assert not (tmp_path / "run_config.json").exists()
