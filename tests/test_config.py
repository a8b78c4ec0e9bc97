"""The run config: CLI flags, --config files, validation, DeepSpeed JSON reconciliation."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cpu_env

from distill.config import (
    ConfigError,
    DistillConfig,
    build_parser,
    config_from_args,
    load_deepspeed_json,
    resolve_deepspeed_config,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fused_adam_builds(monkeypatch):
    """device_type "cuda" here is a GPU node where DeepSpeed's FusedAdam builds, whatever this machine has
    (where it does not: tests/test_optimizer_fallback.py)."""
    from distill import config

    monkeypatch.setattr(config, "fused_adam_problem", lambda: None)


def test_flags_are_the_field_names_and_override_the_config_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"learning_rate": 1e-4, "max_steps": 50, "relations": "qq:1,vv:2"}))
    cfg = config_from_args(["--config", str(path), "--max_steps", "70", "--teacher_layer", "4", "--resume", "none"])
    assert cfg.learning_rate == 1e-4  # from the file
    assert cfg.max_steps == 70  # the flag wins
    assert cfg.teacher_layer == 4 and cfg.resume is None
    assert dict(cfg.relation_spec.relations) == {(1, 1): 1.0, (3, 3): 2.0}
    help_text = build_parser().format_help()
    for name in ("--teacher_layer", "--student_hidden_size", "--num_relation_heads", "--deepspeed_config",
                 "--save_total_limit"):
        assert name in help_text


def test_unknown_config_keys_are_refused(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"learning_rate": 1e-4, "lr": 3}))
    with pytest.raises(ConfigError, match=r"unknown keys \['lr'\]"):
        config_from_args(["--config", str(path)])


@pytest.mark.parametrize("kwargs, message", [
    ({"student_hidden_size": 100, "student_attention_heads": 12}, "not divisible by --student_attention_heads 12"),
    ({"num_relation_heads": 7}, "--num_relation_heads=7 does not divide --student_hidden_size (384)"),
    ({"num_relation_heads": 0}, "--num_relation_heads=0 must be a positive integer"),
    ({"relation_impl": "fast"}, "--relation_impl='fast': choose one of auto, chunked, reference, triton"),
    ({"relations": "qx:1"}, "--relations"),
    ({"warmup_steps": 20, "max_steps": 10}, "--warmup_steps 20 must be between 0 and --max_steps 10"),
    ({"max_seq_len": 2}, "--max_seq_length 2 must be >= 3"),
    ({"student_init": "copy"}, "choose teacher or random"),
    ({"precision": "fp8"}, "choose auto, bf16, fp16 or fp32"),
])
def test_validation_says_how_to_fix(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DistillConfig(**kwargs)


def test_auto_values_are_filled_from_the_config():
    cfg = DistillConfig(per_device_train_batch_size=8, gradient_accumulation_steps=4, learning_rate=3e-4,
                        warmup_steps=10, max_steps=100, max_grad_norm=0.5)
    ds, precision = resolve_deepspeed_config(cfg, load_deepspeed_json(REPO / "ds_configs/multi_gpu_zero2.json"),
                                             world_size=8, device_type="cuda")
    assert ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 8 * 4 * 8
    assert ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"]["lr"] == 3e-4
    assert ds["scheduler"]["params"] == {"warmup_min_lr": 0, "warmup_max_lr": 3e-4, "warmup_num_steps": 10,
                                         "total_num_steps": 100, "warmup_type": "linear"}
    assert precision == "bf16" and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["zero_optimization"]["stage"] == 2


def test_disagreements_are_refused_with_both_values():
    ds = load_deepspeed_json(REPO / "ds_configs/single_gpu_bf16.json")
    ds["train_micro_batch_size_per_gpu"] = 16
    ds["optimizer"]["params"]["lr"] = 1e-3
    cfg = DistillConfig(per_device_train_batch_size=8, learning_rate=3e-4, precision="fp16")
    with pytest.raises(ConfigError) as e:
        resolve_deepspeed_config(cfg, ds, world_size=1, device_type="cuda")
    text = str(e.value)
    assert ("train_micro_batch_size_per_gpu is 16 in the DeepSpeed JSON but --per_device_train_batch_size gives 8"
            in text)
    assert "optimizer.params.lr is 0.001" in text and "--learning_rate gives 0.0003" in text
    assert "the DeepSpeed JSON trains in bf16 but --precision is fp16" in text


def test_precision_by_device_and_cpu_uses_the_torch_optimizer():
    cfg = DistillConfig()
    ds, precision = resolve_deepspeed_config(cfg, load_deepspeed_json("auto"), world_size=1, device_type="cpu")
    assert precision == "fp32" and ds["optimizer"]["params"]["torch_adam"] is True
    _, precision = resolve_deepspeed_config(cfg, load_deepspeed_json("auto"), world_size=1, device_type="cuda",
                                            bf16_supported=False)
    assert precision == "fp16"
    with pytest.raises(ConfigError, match="bf16 is not supported by this GPU"):
        resolve_deepspeed_config(cfg, load_deepspeed_json(REPO / "ds_configs/single_gpu_bf16.json"), world_size=1,
                                 device_type="cuda", bf16_supported=False)


def test_every_shipped_deepspeed_config_resolves():
    cfg = DistillConfig()
    for path in sorted((REPO / "ds_configs").glob("*.json")):
        device = "cpu" if path.name == "cpu.json" else "cuda"
        ds, precision = resolve_deepspeed_config(cfg, load_deepspeed_json(path), world_size=2, device_type=device)
        assert ds["train_batch_size"] == cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * 2, path
        assert precision in ("bf16", "fp16", "fp32")
        assert "auto" not in json.dumps(ds), f"{path.name} keeps an unresolved auto value"


def test_the_docs_document_every_flag_and_every_deepspeed_config():
    from dataclasses import fields

    from helpers import REPO

    from distill.cli_args import flag

    docs = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    missing = [f.name for f in fields(DistillConfig) if f"`{flag(f.name)}`" not in docs]
    assert not missing, f"docs/training.md's flag table lacks {missing}"
    configs = [p.name for p in (REPO / "ds_configs").glob("*.json")]
    assert configs and all(f"`{name}`" in docs for name in configs)


# --------------------------------------------------------------------------- every input checked up front
@pytest.mark.parametrize("flag, value, message", [
    ("learning_rate", "inf", "--learning_rate inf must be a finite number > 0 (e.g. 6e-4)"),
    ("learning_rate", "nan", "--learning_rate nan must be a finite number > 0"),
    ("learning_rate", "-1e-3", "--learning_rate -0.001 must be a finite number > 0"),
    ("learning_rate", "0", "--learning_rate 0.0 must be a finite number > 0"),
    ("weight_decay", "-0.5", "--weight_decay -0.5 must be a finite number >= 0"),
    ("weight_decay", "inf", "--weight_decay inf must be a finite number >= 0"),
    ("adam_beta1", "1", "--adam_beta1 1.0 must be a finite number in [0, 1)"),
    ("adam_beta2", "-.1", "--adam_beta2 -0.1 must be a finite number in [0, 1)"),
    ("adam_beta2", "nan", "--adam_beta2 nan must be a finite number in [0, 1)"),
    ("adam_epsilon", "0", "--adam_epsilon 0.0 must be a finite number > 0"),
    ("adam_epsilon", "-inf", "--adam_epsilon -inf must be a finite number > 0"),
    ("max_grad_norm", "-1", "--max_grad_norm -1.0 must be a finite number >= 0"),
    ("max_grad_norm", "inf", "--max_grad_norm inf must be a finite number >= 0"),
    ("max_steps", "0", "--max_steps 0 must be >= 1"),
    ("save_steps", "-2", "--save_steps -2 must be >= 0"),
    ("logging_steps", "0", "--logging_steps 0 must be >= 1"),
    ("per_device_train_batch_size", "-4", "--per_device_train_batch_size -4 must be >= 1"),
    ("student_intermediate_size", "0", "--student_intermediate_size 0 must be >= 1"),
    ("seed", "-1", "--seed -1 must be between 0 and 4294967295"),
    ("dataloader_num_workers", "-1", "--dataloader_num_workers -1 must be >= 0"),
])
def test_every_number_is_checked_finite_and_in_range(flag, value, message):
    # negative numbers in any float form parse (argparse alone takes only -1 and -.5), then fail the range check
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_args([f"--{flag}", value])


def test_negative_numbers_parse_after_a_flag_in_every_generated_parser():
    from distill.evaluation.cli import run_parser

    args = build_parser().parse_args(["--learning_rate", "-1e-3", "--adam_epsilon", "-INF", "--seed", "-3"])
    assert args.learning_rate == -1e-3 and args.adam_epsilon == float("-inf") and args.seed == -3
    evaluation = run_parser("distill-evaluate").parse_args(["model", "--learning_rate", "-1e-5", "2E-5"])
    assert evaluation.learning_rate == [-1e-5, 2e-5]
    with pytest.raises(SystemExit):  # a word that is no number is still no value
        build_parser().parse_args(["--learning_rate", "-x"])


def run_json(tmp_path, values: dict):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(values))
    return config_from_args(["--config", str(path)])


@pytest.mark.parametrize("values, message", [
    ({"max_steps": 2.7}, '"max_steps": 2.7 is not an integer (optimizer steps of the whole run)'),
    ({"max_steps": 3.0}, '"max_steps": 3.0 is not an integer'),
    ({"max_seq_len": "16"}, '"max_seq_len": "16" is not an integer'),
    ({"save_steps": None}, '"save_steps": null is not an integer'),
    ({"relations": 5}, '"relations": 5 is not a string (relations and weights, e.g. qq:1,kk:1,vv:1'),
    ({"learning_rate": "1e-4"}, '"learning_rate": "1e-4" is not a number'),
    ({"learning_rate": True}, '"learning_rate": true is not a number'),
    ({"verify_data": 1}, '"verify_data": 1 is not true or false'),
    ({"teacher": None}, '"teacher": null is not a string'),
    ({"resume": 3}, '"resume": 3 is not a string or null'),
])
def test_config_file_values_have_the_fields_types(tmp_path, values, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        run_json(tmp_path, values)
    assert f"--config {tmp_path / 'run.json'}" in str(e.value)


def test_config_file_values_go_through_the_same_checks_as_flags(tmp_path):
    cfg = run_json(tmp_path, {"max_grad_norm": 2, "save_total_limit": None, "teacher_layer": 2, "resume": None})
    assert cfg.max_grad_norm == 2.0 and isinstance(cfg.max_grad_norm, float) and cfg.save_total_limit is None
    with pytest.raises(ConfigError, match=re.escape("--learning_rate -1.0 must be a finite number > 0")):
        run_json(tmp_path, {"learning_rate": -1})
    with pytest.raises(ConfigError, match=re.escape("--config")):
        config_from_args(["--config", str(tmp_path / "none.json")])


def test_python_values_are_type_checked_too():
    with pytest.raises(ConfigError, match=re.escape("--max_steps 2.7 is not an integer")):
        DistillConfig(max_steps=2.7)
    with pytest.raises(ConfigError, match=re.escape("--relations 5 is not a string")):
        DistillConfig(relations=5)
    assert DistillConfig(learning_rate=1).learning_rate == 1.0


@pytest.mark.parametrize("section, value, known", [
    ("optimizer", "AdamWW", "Adam, AdamW, Lamb"),
    ("scheduler", "Cosine", "WarmupDecayLR"),
])
def test_unknown_deepspeed_optimizer_or_scheduler_is_refused(section, value, known):
    ds = load_deepspeed_json(REPO / "ds_configs/cpu.json")
    ds[section]["type"] = value
    with pytest.raises(ConfigError, match=re.escape(f"{section}.type {value!r}")) as e:
        resolve_deepspeed_config(DistillConfig(), ds, world_size=1, device_type="cpu")
    assert known in str(e.value)
    ds[section] = "AdamW"
    with pytest.raises(ConfigError, match=re.escape(f"{section} 'AdamW' is not one this run knows")):
        resolve_deepspeed_config(DistillConfig(), ds, world_size=1, device_type="cpu")


def run_cli(tmp_path, *flags):
    """`distill.cli.main` with a valid --data; (exit status, stderr)."""
    import subprocess
    import sys

    from helpers import cpu_env, write_shard_dir

    data = tmp_path / "shards"
    if not data.exists():
        write_shard_dir(data, [[11, 12, 13]] * 4)
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "--data", str(data), "--output_dir",
                           str(tmp_path / "out"), *flags], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=cpu_env())
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("teacher", ["./x", "../missing/teacher", "~/no-such-distill-teacher", "/no/such/dir",
                                     "a/b/c", "has space"])
def test_a_teacher_path_that_does_not_exist_is_named(tmp_path, teacher, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(f"--teacher {teacher}: no such directory; give a model directory "
                                                    "or a hub name like google-bert/bert-base-uncased")):
        DistillConfig(teacher=teacher).check_paths()


def test_a_teacher_path_whose_first_part_exists_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ConfigError, match="--teacher models/bert: no such directory"):
        DistillConfig(teacher="models/bert").check_paths()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="--teacher ./config.json: a file, not a model directory"):
        DistillConfig(teacher="./config.json").check_paths()
    # hub names are left to the hub
    assert DistillConfig(teacher="google-bert/bert-base-uncased").teacher == "google-bert/bert-base-uncased"
    assert DistillConfig(teacher="bert-base-uncased").teacher == "bert-base-uncased"


def test_missing_teacher_path_fails_before_anything_is_written(tmp_path):
    status, err = run_cli(tmp_path, "--teacher", "./x")
    assert status == 2 and err.startswith("error: --teacher ./x: no such directory"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "--data {p}: no such directory; build one with tools/pretokenize.py"),
    (lambda p: p.write_text("x"), "--data {p}: a file, not a shard directory"),
    (lambda p: p.mkdir(), "--data {p}: no manifest.json: it is not a finished shard directory"),
])
def test_data_is_checked_up_front(tmp_path, make, message):
    path = tmp_path / "data"
    make(path)
    with pytest.raises(ConfigError, match=re.escape(message.format(p=str(path)))):
        DistillConfig(data=str(path)).check_paths()


def test_training_without_data_or_a_dataset_is_refused():
    from transformers import BertConfig

    from distill.preflight import build_dataset

    with pytest.raises(ConfigError, match=re.escape("--data is required: give a shard directory")):
        build_dataset(DistillConfig(), BertConfig())


def test_making_a_config_touches_no_file_and_help_imports_no_torch(tmp_path):
    """Parsing flags is cheap: no torch, transformers or numpy for --help, no file read for a config."""
    code = ("import sys\nfrom distill.config import DistillConfig, config_from_args\n"
            "cfg = DistillConfig(teacher='./missing-teacher', data='/no/such/shards')\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'transformers', 'deepspeed') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n"
            "config_from_args(['--help'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=cpu_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout and "--teacher" in proc.stdout
