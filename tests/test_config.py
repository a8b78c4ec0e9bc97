"""The run config: CLI flags, --config files, validation, DeepSpeed JSON reconciliation."""
import json
from pathlib import Path

import pytest

from distill.config import (
    ConfigError,
    DistillConfig,
    build_parser,
    config_from_args,
    load_deepspeed_json,
    resolve_deepspeed_config,
)

REPO = Path(__file__).resolve().parents[1]


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
    ({"max_seq_len": 2}, "--max_seq_len 2 must be >= 3"),
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


def test_readme_documents_every_flag_and_every_deepspeed_config():
    from dataclasses import fields

    from conftest import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [f.name for f in fields(DistillConfig) if f"`--{f.name}`" not in readme]
    assert not missing, f"README's flag table lacks {missing}"
    configs = [p.name for p in (REPO / "ds_configs").glob("*.json")]
    assert configs and all(f"`{name}`" in readme for name in configs)
