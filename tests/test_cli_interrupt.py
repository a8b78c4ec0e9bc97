"""Ctrl-C outside the training loop: one line, exit 130, no traceback."""
from __future__ import annotations

from helpers import write_shard_dir

from distill import cli, trainer


def test_ctrl_c_before_training_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    shards = write_shard_dir(tmp_path / "shards", [[5, 6, 7]] * 8)
    code = cli.main(["--teacher", "google-bert/bert-base-uncased", "--data", str(shards),
                     "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 130
    assert err.strip().splitlines() == [
        f"interrupted (Ctrl-C): stopped; every checkpoint already saved in {tmp_path / 'run'} is complete (continue "
        "with --resume auto), unfinished files are discarded"]
