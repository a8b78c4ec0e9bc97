"""distill.evaluation.demo (tools/demo_table.py): every input is checked before a model is built, loaded or trained."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import save_tiny_teacher

from distill.evaluation import demo


class Reached(Exception):
    """Raised where the demo's first piece of work would start."""


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer_dir) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("demo_models")
    return save_tiny_teacher(root / "teacher", tiny_tokenizer_dir), save_tiny_teacher(root / "student",
                                                                                     tiny_tokenizer_dir, seed=1)


@pytest.fixture
def no_work(monkeypatch):
    def reached(*args, **kwargs):
        raise Reached()
    for name in ("build_sliced_student", "build_random_student", "fine_tune_all", "embed_all"):
        monkeypatch.setattr(demo, name, reached)


def _args(models, tmp_path, *extra) -> list[str]:
    teacher, student = models
    reviews = tmp_path / "reviews.parquet"
    reviews.touch()
    return ["--teacher", str(teacher), "--student", str(student), "--output_dir", str(tmp_path / "demo"),
            "--reviews", str(reviews), "--max_seq_length", "32", *extra]


def test_good_inputs_reach_the_work(models, tmp_path, no_work):
    with pytest.raises(Reached):
        demo.main(_args(models, tmp_path))


def test_bad_inputs_are_refused_before_any_model_is_loaded(models, tmp_path, no_work, capsys):
    teacher, student = models
    no_config = tmp_path / "no_config"
    shutil.copytree(student, no_config, ignore=shutil.ignore_patterns("config.json"))
    other = tmp_path / "other_architecture"
    shutil.copytree(student, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "roberta",
                                                   "architectures": ["RobertaModel"]}))
    (tmp_path / "a_file").write_text("mine")
    for extra, message in [
        (["--student", "./no/such/student"], "error: --student ./no/such/student: no such directory"),
        (["--teacher", str(tmp_path / "missing")], f"error: --teacher {tmp_path / 'missing'}: no such directory"),
        (["--student", str(no_config)], f"error: {no_config} has no config.json"),
        (["--student", str(teacher)], "are the same directory"),
        (["--student", str(other)], "is a roberta model, the teacher a bert model"),
        (["--seeds", "-1"], "seeds=[-1] must be whole numbers from 0"),
        (["--epochs", "0"], "epochs=[0.0] must be > 0"),
        (["--max_train_samples", "-5"], "max_train_samples=-5 must be a positive integer"),
        (["--samples_per_label", "-1"], "samples_per_label=-1 must be a positive integer"),
        (["--max_seq_length", "512"], "max_seq_length=512 is longer than the model's 64 positions"),
        (["--devices", "gpu0"], "give GPU indices"),
        (["--reviews", str(tmp_path / "nowhere.parquet")], "nowhere.parquet: no such file or directory"),
        (["--output_dir", str(tmp_path / "a_file")], f"--output_dir {tmp_path / 'a_file'} is a file"),
    ]:
        assert demo.main(_args(models, tmp_path, *extra)) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (message, err)
    assert not (tmp_path / "demo").exists()


def test_result_folders_that_cannot_be_used_are_refused_before_any_work(models, tmp_path, no_work, capsys,
                                                                        monkeypatch):
    out = tmp_path / "demo"
    (out / "results").parent.mkdir(parents=True)
    (out / "results").write_text("not a folder")
    assert demo.main(_args(models, tmp_path)) == 2
    assert f"{out / 'results'} is a file, not a directory" in capsys.readouterr().err
    (out / "results").unlink()
    (out / "results").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == out / "results"
                        else real_access(p, mode))  # root reads anything: the check is what is tested
    assert demo.main(_args(models, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(out / "results") in err and "permission" in err, err
