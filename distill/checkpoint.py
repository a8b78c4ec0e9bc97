"""Checkpoint directories: naming, completeness, rotation, RNG state, shape checks.

Layout of `output_dir`:

    output_dir/
      run_config.json          the DistillConfig of the run (rank 0, atomic)
      student_config/          the student's config.json + the tokenizer (for export)
      checkpoints/
        step-00000100/         engine.save_checkpoint(tag="step-00000100") + our files:
          rng-rank00000.pt     each rank's RNG states
          COMPLETE             written last by rank 0, after every rank finished (atomic)
        latest                 DeepSpeed's own pointer (not trusted for resume)

A checkpoint without COMPLETE was being written when the process died: it is never resumed,
never counted by the rotation, and is removed by the next successful save.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .shards import atomic_write_json

COMPLETE = "COMPLETE"
_TAG = re.compile(r"^step-(\d{8})$")


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def tag_for_step(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def list_checkpoints(output_dir: str | Path, complete_only: bool = True) -> list[Path]:
    """Checkpoint directories, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _TAG.match(p.name)]
    if complete_only:
        found = [p for p in found if is_complete(p)]
    return sorted(found, key=lambda p: int(_TAG.match(p.name).group(1)))


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """`--resume auto` -> newest complete checkpoint (or None: a fresh start); a path -> checked."""
    if resume is None:
        return None
    if resume == "auto":
        done = list_checkpoints(output_dir)
        return done[-1] if done else None
    path = Path(resume)
    if path.is_dir() and not _TAG.match(path.name):
        done = list_checkpoints(path)  # an output_dir was given: take its newest
        if done:
            return done[-1]
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint directory; use --resume auto to take the "
                                f"newest complete one in --output_dir")
    if not is_complete(path):
        raise ValueError(f"--resume {resume}: this checkpoint is incomplete (no {COMPLETE} marker: the run died while "
                         f"writing it); resume from an earlier one or use --resume auto")
    return path


def mark_complete(path: Path, info: dict[str, Any]) -> None:
    atomic_write_json(path / COMPLETE, info)


def rotate(output_dir: str | Path, keep: int | None) -> list[Path]:
    """Delete incomplete checkpoints and all but the newest `keep` complete ones (rank 0 only)."""
    removed = []
    complete = list_checkpoints(output_dir)
    for p in list_checkpoints(output_dir, complete_only=False):
        if not is_complete(p) and (not complete or p.name < complete[-1].name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if keep is not None:
        for p in complete[:-keep]:
            (p / COMPLETE).unlink(missing_ok=True)  # first: a half-deleted dir is never taken as complete
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


# --------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def rng_file(path: Path, rank: int) -> Path:
    return path / f"rng-rank{rank:05d}.pt"


# --------------------------------------------------------------------------- shape checks
SHAPE_FIELDS = ("student_layer", "student_hidden_size", "student_attention_heads", "student_intermediate_size",
                "teacher_layer")


def shape_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Fields that define the model's shape and differ between a checkpoint and this run."""
    return [f"{k}: checkpoint {saved.get(k)!r}, this run {current.get(k)!r}"
            for k in SHAPE_FIELDS if k in saved and saved.get(k) != current.get(k)]


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
