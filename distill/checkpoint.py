"""Checkpoints: saving and resuming a run, naming, completeness, rotation, RNG state, shape checks.

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

import dataclasses
import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from .config import ConfigError
from .shards import atomic_write_json

if TYPE_CHECKING:
    from .config import DistillConfig

COMPLETE = "COMPLETE"


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint's client state."""

    step: int = 0  # optimizer steps done
    samples: int = 0  # windows consumed by all ranks together
    epoch: int = 0  # pass over the data the loader is in
    epoch_offset: int = 0  # windows of this epoch consumed by all ranks together


# --------------------------------------------------------------------------- save and resume
def save_checkpoint(engine, cfg: DistillConfig, state: TrainState, rank: int) -> Path:
    """Every rank saves its engine shards and RNG states; rank 0 then marks the checkpoint complete and rotates."""
    root = checkpoints_dir(cfg.output_dir)
    tag = tag_for_step(state.step)
    client = {"state": dataclasses.asdict(state), "config": cfg.to_dict()}
    engine.save_checkpoint(str(root), tag=tag, client_state=client)
    torch.save(rng_state(), rng_file(root / tag, rank))
    dist.barrier()  # every rank's files are on disk before the marker says so
    if rank == 0:
        mark_complete(root / tag, client)
        rotate(cfg.output_dir, cfg.save_total_limit)
    dist.barrier()
    return root / tag


def check_resume_compatible(path: Path, cfg: DistillConfig) -> dict[str, Any]:
    """The checkpoint's COMPLETE record; ConfigError when it was made with another model shape."""
    saved = read_json(path / COMPLETE)
    diffs = shape_differences(saved["config"], cfg.to_dict())
    if diffs:
        raise ConfigError(f"cannot resume {path}: it was made with a different model shape:\n  - "
                          + "\n  - ".join(diffs)
                          + "\nresume with the checkpoint's settings or start a new --output_dir")
    return saved


def find_resume(cfg: DistillConfig) -> Path | None:
    """The checkpoint `cfg.resume` names (None: a fresh start), checked against cfg before any model is built."""
    path = resolve_resume(cfg.resume, cfg.output_dir)
    if path is not None:
        check_resume_compatible(path, cfg)
    return path


def load_train_state(engine, path: Path) -> TrainState:
    """Load the engine's weights and optimizer from checkpoint `path`; return the run's position."""
    _, client = engine.load_checkpoint(str(path.parent), tag=path.name)
    return TrainState(**client["state"])


def restore_rng_state(path: Path, rank: int) -> None:
    """This rank's Python, NumPy, torch (and CUDA) generators as they were when `path` was saved."""
    set_rng_state(torch.load(rng_file(path, rank), weights_only=False))


# --------------------------------------------------------------------------- directories
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
