"""The DeepSpeed JSON's ZeRO section is checked with the flags, before any model is built or file written."""
from __future__ import annotations

import pytest
from helpers import write_shard_dir

from distill.config import ConfigError, DistillConfig, resolve_deepspeed_config


@pytest.mark.parametrize("zero, message", [
    ({"stage": 7}, "zero_optimization.stage is 7: choose 0, 1, 2 or 3"),
    ({"stage": "2"}, "zero_optimization.stage is '2': choose 0, 1, 2 or 3"),
    ({"stage": True}, "zero_optimization.stage is True"),
    ([1], "zero_optimization is [1], not an object"),
    ({"stage": 2, "offload_optimizer": {"device": "gpu"}}, "zero_optimization.offload_optimizer is {'device': 'gpu'}"),
    ({"stage": 2, "offload_param": {"device": "cpu"}}, "parameter offload needs stage 3"),
])
def test_a_zero_section_deepspeed_would_refuse_later_is_refused_now(tmp_path, zero, message):
    shards = write_shard_dir(tmp_path / "shards", [[5, 6, 7]] * 8)
    cfg = DistillConfig(teacher="google-bert/bert-base-uncased", data=str(shards), output_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError) as err:
        resolve_deepspeed_config(cfg, {"zero_optimization": zero}, world_size=1, device_type="cpu")
    assert message in str(err.value)


@pytest.mark.parametrize("zero", [{"stage": 0}, {"stage": 3, "offload_param": {"device": "cpu"}},
                                  {"stage": 2, "offload_optimizer": {"device": "cpu"}}])
def test_the_zero_sections_deepspeed_takes_pass(tmp_path, zero):
    shards = write_shard_dir(tmp_path / "shards", [[5, 6, 7]] * 8)
    cfg = DistillConfig(teacher="google-bert/bert-base-uncased", data=str(shards), output_dir=str(tmp_path / "run"))
    ds, _ = resolve_deepspeed_config(cfg, {"zero_optimization": zero}, world_size=1, device_type="cpu")
    assert ds["zero_optimization"]["stage"] == zero["stage"]
