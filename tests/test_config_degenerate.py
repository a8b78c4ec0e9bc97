"""Settings that would run and do nothing useful are refused when the config is made."""
from __future__ import annotations

import pytest
from helpers import write_shard_dir

from distill.config import ConfigError, DistillConfig


@pytest.mark.parametrize("overrides, message", [
    ({"relations": "qq:0"}, "--relations: every relation (qq) has weight 0: nothing would be distilled"),
    ({"relations": "qq:1,kk:0"}, "--relations: relation kk has weight 0"),
    ({"output_dir": ""}, "--output_dir is empty: give the directory"),
    ({"output_dir": "  "}, "--output_dir is empty"),
    ({"max_steps": 0}, "--max_steps 0 must be >= 1"),
])
def test_degenerate_settings_are_refused(tmp_path, overrides, message):
    shards = write_shard_dir(tmp_path / "shards", [[5, 6, 7]] * 8)
    with pytest.raises(ConfigError) as err:
        DistillConfig(**{"teacher": "google-bert/bert-base-uncased", "data": str(shards),
                         "output_dir": str(tmp_path / "run"), **overrides})
    assert message in str(err.value)
