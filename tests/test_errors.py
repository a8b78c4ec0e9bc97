"""One error hierarchy (distill.errors), narrow catches: every command maps a DistillError to `error: ...` and its
exit code (2; 3 for a diverged run) and lets anything else, a bug, escape with its traceback (exit 1)."""
from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import types

import pytest
from helpers import REPO, RUN_ENV

import distill.errors as E

USER_ERRORS = (E.ConfigError, E.ConfigTypeError, E.LockedError, E.UnsupportedEncoder, E.DataError, E.ShardError,
               E.TaskDataError, E.PretokenizeError, E.CheckpointError, E.ExportError, E.DivergedError)
OLD_PATHS = {  # where each class was defined before distill.errors: those imports keep working
    "distill.config": ("ConfigError",), "distill.locks": ("LockedError",), "distill.encoders": ("UnsupportedEncoder",),
    "distill.data": ("DataError",), "distill.shards": ("ShardError",), "distill.evaluation.tasks": ("TaskDataError",),
    "distill.pretokenize.errors": ("PretokenizeError",), "distill.pretokenize": ("PretokenizeError",),
    "distill.checkpoint": ("CheckpointError",), "distill": ("ConfigError", "ShardError", "DataError"),
}
BROAD = {"Exception", "BaseException", "ValueError", "TypeError", "KeyError", "RuntimeError", "OSError",
         "FileNotFoundError", "FloatingPointError", "AttributeError", "IndexError", "ArithmeticError", "LookupError"}


# --------------------------------------------------------------------------- the hierarchy
def test_every_user_error_is_a_distill_error_and_keeps_its_builtin_base():
    for cls in USER_ERRORS:
        assert issubclass(cls, E.DistillError), cls
    assert {cls: cls.exit_code for cls in USER_ERRORS} == {cls: 3 if cls is E.DivergedError else 2
                                                           for cls in USER_ERRORS}
    for cls, base in ((E.ConfigError, ValueError), (E.DataError, ValueError), (E.ShardError, E.DataError),
                      (E.TaskDataError, E.DataError), (E.CheckpointError, ValueError), (E.LockedError, E.ConfigError),
                      (E.UnsupportedEncoder, E.ConfigError), (E.ConfigTypeError, TypeError),
                      (E.ExportError, ValueError), (E.DivergedError, FloatingPointError)):
        assert issubclass(cls, base), (cls, base)
    assert not issubclass(E.DistillError, (ValueError, TypeError, OSError))  # a bug's ValueError is no user error


def test_the_old_import_paths_give_the_same_class_objects_and_no_class_is_defined_twice():
    for module, names in OLD_PATHS.items():
        for name in names:
            assert getattr(importlib.import_module(module), name) is getattr(E, name), (module, name)
    defined = {}
    for path in sorted((REPO / "distill").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name in E.__all__:
                defined.setdefault(node.name, []).append(str(path.relative_to(REPO)))
    assert defined == {name: ["distill/errors.py"] for name in E.__all__}


def _handlers(fn: ast.FunctionDef):
    """(names caught, handler) of every except clause in `fn`; a bare `except:` catches {None}."""
    for handler in (n for n in ast.walk(fn) if isinstance(n, ast.ExceptHandler)):
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        yield {k.id if isinstance(k, ast.Name) else k.attr if isinstance(k, ast.Attribute) else None
               for k in kinds}, handler


def test_no_command_main_catches_builtin_exceptions_broadly():
    """Every `main` in distill/ catches DistillError (and KeyboardInterrupt) only: a bug is not a user error.

    The one exception is the grid's worker (`python -m distill.evaluation.finetune RUN_DIR`, no command of its own):
    it keeps any failure's traceback in the run's error.txt, prints it and exits 1, the status of a bug."""
    seen = []
    for path in sorted((REPO / "distill").rglob("*.py")):
        where = str(path.relative_to(REPO))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "main"):
            seen.append(where)
            for names, handler in _handlers(fn):
                if where == "distill/evaluation/finetune.py" and names == {"Exception"}:
                    returns = [n.value.value for n in ast.walk(handler) if isinstance(n, ast.Return)
                               and isinstance(n.value, ast.Constant)]
                    assert returns == [1], f"{where}:{handler.lineno} must report a failed run as exit 1"
                    continue
                assert not names & BROAD and None not in names, f"{where}:{handler.lineno} catches {names}"
                assert names <= {"DistillError", "KeyboardInterrupt"}, f"{where}:{handler.lineno}: {names}"
    assert len(seen) >= 8, seen  # the commands' mains were found


# --------------------------------------------------------------------------- the commands
def _internal(kind=ValueError):
    def boom(*args, **kwargs):
        raise kind("internal")
    return boom


def _one_error_line(err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], err


def test_training_command(tmp_path, monkeypatch, capsys):
    import distill.trainer
    from distill import cli

    assert cli.main(["--max_steps", "0", "--output_dir", str(tmp_path / "run")]) == 2
    _one_error_line(capsys.readouterr().err, "--max_steps 0")
    for kind in (ValueError, TypeError, KeyError):
        monkeypatch.setattr(distill.trainer, "train", _internal(kind))
        with pytest.raises(kind, match="internal"):
            cli.main(["--output_dir", str(tmp_path / "run")])
        assert "error:" not in capsys.readouterr().err


def test_a_diverged_run_exits_3_with_its_message(tmp_path, monkeypatch, capsys):
    import distill.trainer
    from distill import cli

    def diverge(cfg):
        raise E.DivergedError("the run diverged: the loss was not finite for 10 micro-batches in a row (step 7); "
                              "the run stopped without saving; there is no earlier complete checkpoint: lower "
                              "--learning_rate, use bf16 instead of fp16, or check the data")

    monkeypatch.setattr(distill.trainer, "train", diverge)
    assert cli.main(["--output_dir", str(tmp_path / "run")]) == 3
    _one_error_line(capsys.readouterr().err, "error: the run diverged: the loss was not finite", "--learning_rate")


def test_the_trainer_stops_a_diverged_run_with_diverged_error(tmp_path):
    from distill import trainer
    from distill.checkpoint import TrainState

    cfg = types.SimpleNamespace(output_dir=str(tmp_path))
    guard = types.SimpleNamespace(consecutive_nonfinite=trainer.MAX_NONFINITE)
    with pytest.raises(E.DivergedError, match=r"^the run diverged: the loss was not finite for 10 micro-batches in a "
                                              r"row \(step 5\).*there is no earlier complete checkpoint: lower "
                                              r"--learning_rate") as info:
        trainer._check_nonfinite(guard, TrainState(step=5), cfg)
    assert info.value.exit_code == 3 and isinstance(info.value, FloatingPointError)

    class Engine:
        def fp16_enabled(self):
            return False

        def was_step_applied(self):
            return True

        def get_global_grad_norm(self):
            return float("inf")

    flags = types.SimpleNamespace(finite=[True], weights_finite=False)
    with pytest.raises(E.DivergedError, match=r"^the run diverged: optimizer step 6 made the student's weights "):
        trainer._check_step(Engine(), TrainState(step=5), cfg, 0, flags)


def test_pretokenize_command(tmp_path, monkeypatch, capsys, tiny_tokenizer_dir):
    import distill.pretokenize.cli as P

    args = ["--tokenizer_name", str(tiny_tokenizer_dir), "--input", str(tmp_path / "missing.txt"), "--output_dir",
            str(tmp_path / "shards")]
    assert P.main(args) == 2
    _one_error_line(capsys.readouterr().err, "missing.txt")
    monkeypatch.setattr(P, "build", _internal(TypeError))
    with pytest.raises(TypeError, match="internal"):
        P.main(args)


def test_inspect_command(tmp_path, monkeypatch, capsys):
    from helpers import write_shard_dir

    import distill.inspect_shards as I

    assert I.main([str(tmp_path / "none")]) == 2
    _one_error_line(capsys.readouterr().err, str(tmp_path / "none"))
    write_shard_dir(tmp_path / "shards", [[5, 6, 7]] * 4)
    monkeypatch.setattr(I, "shard_statistics", _internal(ValueError))
    with pytest.raises(ValueError, match="internal"):
        I.main([str(tmp_path / "shards")])


def test_export_command(tmp_path, monkeypatch, capsys):
    import distill.export as X

    assert X.main([str(tmp_path / "none"), "--output_dir", str(tmp_path / "student")]) == 2
    _one_error_line(capsys.readouterr().err, "no such checkpoint or run directory")
    monkeypatch.setattr(X, "resolve_source", _internal(ValueError))
    with pytest.raises(ValueError, match="internal"):
        X.main([str(tmp_path / "none"), "--output_dir", str(tmp_path / "student")])


def test_evaluation_command_and_its_summary(tmp_path, monkeypatch, capsys):
    from distill.evaluation import cli

    assert cli.main(["summary", str(tmp_path / "missing")]) == 2
    _one_error_line(capsys.readouterr().err, "missing")
    assert cli.main(["m", "--devices", "1", "gpu"]) == 2
    _one_error_line(capsys.readouterr().err, "devices")
    monkeypatch.setattr(cli, "print_summary", _internal(ValueError))
    with pytest.raises(ValueError, match="internal"):
        cli.main(["summary", str(tmp_path)])
    monkeypatch.setattr(cli, "run", _internal(TypeError))
    with pytest.raises(TypeError, match="internal"):
        cli.main(["m", "--output_dir", str(tmp_path / "out")])


def test_embedding_evaluation_command(tmp_path, monkeypatch, capsys):
    from distill.evaluation import embedding_eval as EE

    args = [str(tmp_path / "no-such-model"), "--tasks", "reviews", "--output_dir", str(tmp_path / "out")]
    assert EE.main(args) == 2
    _one_error_line(capsys.readouterr().err, "no-such-model")
    monkeypatch.setattr(EE, "evaluate_embeddings", _internal(ValueError))
    with pytest.raises(ValueError, match="internal"):
        EE.main(args)


def test_demo_table_command(tmp_path, monkeypatch, capsys):
    from distill.evaluation import demo

    args = ["--student", str(tmp_path / "no-student"), "--output_dir", str(tmp_path / "out")]
    assert demo.main(args) == 2
    _one_error_line(capsys.readouterr().err, "no-student")
    monkeypatch.setattr(demo, "check_inputs", _internal(ValueError))
    with pytest.raises(ValueError, match="internal"):
        demo.main(args)


def test_a_bug_in_a_command_is_a_traceback_and_exit_1_not_a_user_error(tmp_path):
    """Through the real entry point: Python's own report of the bug, not `error: ...` and exit 2."""
    script = ("import sys, distill.trainer\n"
              "def train(cfg):\n    raise ValueError('internal: a bug')\n"
              "distill.trainer.train = train\n"
              "from distill.cli import main\n"
              f"sys.exit(main(['--output_dir', {str(tmp_path / 'run')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=RUN_ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback (most recent call last)" in proc.stderr and "ValueError: internal: a bug" in proc.stderr
    assert "error:" not in proc.stderr.replace("ValueError:", "")


def test_a_model_transformers_cannot_load_is_a_user_error(tmp_path, monkeypatch, capsys):
    """transformers' OSError for a model it cannot load (here: a config that is not JSON, weights that are missing;
    a hub name that does not exist or cannot be reached is the same error) is named as the input it is."""
    import torch

    import distill.trainer
    from distill import cli
    from distill.teacher import FrozenTeacher

    # one process, no process group (it would outlive the test): rank 0 of 1 on the CPU
    monkeypatch.setattr(distill.trainer, "init_distributed", lambda: (0, 1, 0, torch.device("cpu")))

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert cli.main(["--teacher", str(broken), "--output_dir", str(tmp_path / "run")]) == 2
    _one_error_line(capsys.readouterr().err, f"--teacher {broken} cannot be loaded", "not a valid JSON file",
                    "give a model directory holding config.json")
    (broken / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
                                                    "num_attention_heads": 4, "intermediate_size": 64,
                                                    "vocab_size": 99}))
    with pytest.raises(E.ConfigError, match=f"teacher {broken} cannot be loaded .*no file named model.safetensors"):
        FrozenTeacher(str(broken), 1)
