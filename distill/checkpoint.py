"""Checkpoints: saving and resuming a run, naming, completeness, rotation, RNG state, shape checks.

Layout of `output_dir`:

    output_dir/
      run_config.json          the DistillConfig of the run (rank 0, atomic)
      student_config/          the student's config.json + the tokenizer (for export)
      tensorboard/             rank 0's scalars
      checkpoints/
        step-00000100/         engine.save_checkpoint + our files:
          rng-rank00000.pt     each rank's RNG states
          COMPLETE             JSON {state, config, provenance, files: {name: bytes}, sha256: {name: hex}},
                               written by rank 0 last
        latest                 DeepSpeed's pointer to the newest tag (rank 0, atomic; resume does not read it)
        abandoned-<UTC time>/  checkpoints of another future of the run (see "Resuming an older checkpoint")

Saving (`save_checkpoint`) never changes a `step-*` directory in place. Every rank writes its part
into a hidden temporary directory `.step-00000100.tmp-<nonce>` and fsyncs it; after a barrier,
rank 0 checks that every rank's part is there, writes COMPLETE into it, moves an existing
`step-00000100` aside, renames the temporary directory to `step-00000100` and fsyncs
`checkpoints/`. So at every instant each `step-*` directory is complete and loadable, or it is
not marked COMPLETE (in practice: absent). A crash, `kill -9`, or a full disk at any moment
leaves at worst a hidden temporary directory, which is never resumed or exported and is removed
by the next successful save. A COMPLETE marker also lists the size and the sha256 of every file
(rank 0 reads them once, when every part is there): a marker that is empty, not JSON or lacks
keys, a file shorter than recorded, or one whose contents changed (a flipped byte), is an error
naming the file and the previous complete checkpoint (for `--resume`, for export, and before
`last_good` calls a checkpoint good). Markers written before checksums are checked by size, with
a note.

Provenance: the client state (and COMPLETE) records the teacher's fingerprint (`teacher_fingerprint`:
its config and weights by content, or a hub name and its cached snapshot), the sha256 of `--data`'s
manifest and `--max_seq_length`. Resuming with another teacher, other data or another window length is
a ConfigError naming each difference (checked with the model shape, by rank 0); a checkpoint saved
before provenance was recorded resumes with a note.

Resuming an older checkpoint: `--resume PATH` to a checkpoint older than the newest complete one
in OUTPUT_DIR starts another future of the run, which would otherwise mix with the newer
checkpoints. They are left untouched until the resumed run's first checkpoint is complete (a crash
before that loses nothing: `--resume auto` still finds them); at that save every complete
checkpoint of a step at or after the new one is moved, never deleted, to
`checkpoints/abandoned-<UTC time>/`, where resume, rotation (`--save_total_limit`) and export never
look. Delete that folder when you no longer need it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import random
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from .errors import CheckpointError, ConfigError
from .io import atomic_write_bytes, atomic_write_json, file_sha256, fsync_dir, fsync_tree
from .paths import EXPORT_MARKER, is_no_space, output_dir_problem
from .shards import MANIFEST_NAME

if TYPE_CHECKING:
    from .config import DistillConfig

COMPLETE = "COMPLETE"
SHARED_FS_WAIT_ENV = "DISTILL_SHARED_FS_WAIT_S"  # how long rank 0 waits for other nodes' parts to be visible
RUN_FILES = ("run_config.json", "student_config", "checkpoints", "tensorboard")  # what a run writes in output_dir
WEIGHT_SUFFIXES = (".safetensors", ".bin")  # a local teacher's files that its fingerprint reads, with config.json


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint's client state."""

    step: int = 0  # optimizer steps done
    samples: int = 0  # windows consumed by all ranks together
    epoch: int = 0  # pass over the data the loader is in
    epoch_offset: int = 0  # windows of this epoch consumed by all ranks together


# --------------------------------------------------------------------------- save
def save_checkpoint(engine, cfg: DistillConfig, state: TrainState, rank: int) -> Path:
    """Every rank saves its part into a temporary directory; rank 0 marks it complete and renames it into place.

    Refuses (CheckpointError on every rank, nothing marked complete) when the weights are not finite
    or a write fails (a full disk is named as such); the message names the last good checkpoint.
    """
    root = checkpoints_dir(cfg.output_dir)
    tag = tag_for_step(state.step)
    if not weights_finite(engine):
        raise CheckpointError(f"the student's weights are not finite (or beyond float32's range in norm) at step "
                              f"{state.step}: checkpoint {tag} was not "
                              f"saved; {last_good(cfg.output_dir)}. Lower --learning_rate (or use bf16 instead of "
                              "fp16) and continue from it")
    name, provenance = _agreed((f".{tag}.tmp-{secrets.token_hex(4)}", run_provenance(cfg) if rank == 0 else None))
    tmp = root / name
    client = {"state": dataclasses.asdict(state), "config": cfg.to_dict(), "provenance": provenance}
    failure = None
    try:
        engine.save_checkpoint(str(root), tag=tmp.name, client_state=client, save_latest=False)
        torch.save(rng_state(), rng_file(tmp, rank))
        fsync_tree(tmp)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError("... unexpected pos ...")
        failure = _save_error(e, tag, cfg.output_dir)
    failure = _first_failure(failure)  # every rank learns of any rank's failure
    if failure is None and rank == 0:
        try:
            publish(tmp, root / tag, client, dist.get_world_size() if dist.is_initialized() else 1,
                    cfg.save_total_limit)
        except (OSError, CheckpointError) as e:
            failure = str(e) if isinstance(e, CheckpointError) else _save_error(e, tag, cfg.output_dir)
    failure = _agreed(failure)
    if failure is not None:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # never marked complete; frees the space it took
        raise CheckpointError(failure)
    return root / tag


def publish(tmp: Path, target: Path, client: dict[str, Any], world: int, keep: int | None) -> None:
    """Rank 0: mark the finished temporary checkpoint `tmp` complete and rename it to `target`.

    A directory already at `target`, and every complete checkpoint after it, belong to another future
    of the run (an older checkpoint was resumed): they are moved to `checkpoints/abandoned-<time>/`.
    """
    missing = _missing_parts(tmp, world)
    if missing:
        raise CheckpointError(f"ranks {missing} wrote their part of {target.name} where rank 0 cannot see it "
                              f"(no {rng_file(tmp, missing[0]).name} in {tmp}): --output_dir must be one directory "
                              "that every node shares: put it on a shared filesystem that supports atomic rename "
                              f"(NFS, Lustre, ...), not a node-local path (waited {SHARED_FS_WAIT_ENV}="
                              f"{shared_fs_wait():g} s)")
    mark_complete(tmp, {**client, **file_records(tmp)})
    root = target.parent
    step = step_of(target)
    other_future = [p for p in list_checkpoints(root.parent) if step_of(p) >= step]
    if target.exists() and not is_complete(target):
        shutil.rmtree(target)  # a save of an earlier version that died: never resumable
    aside = _abandon([p for p in other_future if p.name == target.name], root)
    os.replace(tmp, target)
    fsync_dir(root)
    aside = _abandon([p for p in other_future if p.name != target.name], root, aside) or aside
    if aside is not None:
        print(f"checkpoints of another future of this run (after the resumed step) were moved to {aside}; "
              "delete it when you no longer need them", flush=True)
    atomic_write_bytes(root / "latest", [target.name.encode()])
    rotate(root.parent, keep)


def shared_fs_wait() -> float:
    """Seconds rank 0 waits for other ranks' parts to appear: $DISTILL_SHARED_FS_WAIT_S, default 30."""
    text = os.environ.get(SHARED_FS_WAIT_ENV, "30")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise CheckpointError(f"{SHARED_FS_WAIT_ENV}={text!r} must be a number of seconds >= 0 (default 30)")
    return value


def _missing_parts(tmp: Path, world: int, patience: float | None = None) -> list[int]:
    """Ranks whose RNG file (written last, after their DeepSpeed files) rank 0 does not see in `tmp`; waits up to
    `patience` seconds (default `shared_fs_wait()`), for shared filesystems whose directory listings lag (NFS
    attribute caching)."""
    deadline = time.monotonic() + (shared_fs_wait() if patience is None else patience)
    while True:
        missing = [r for r in range(world) if not rng_file(tmp, r).is_file()]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(1.0)


def _abandon(paths: list[Path], root: Path, into: Path | None = None) -> Path | None:
    """Move checkpoint directories into `into` (created as checkpoints/abandoned-<UTC time>); return it."""
    if not paths:
        return None
    if into is None:
        into = root / f"abandoned-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(2)}"
        into.mkdir()
    for p in paths:
        os.replace(p, into / p.name)
    fsync_dir(root)
    return into


def _save_error(e: OSError | RuntimeError, tag: str, output_dir: str | Path) -> str:
    where = checkpoints_dir(output_dir)
    if is_no_space(e) or (isinstance(e, RuntimeError) and _nearly_full(where)):
        return (f"no space left on device while saving checkpoint {tag} in {where}; {last_good(output_dir)}. "
                "Free space (or set a smaller --save_total_limit) and continue with --resume auto")
    return (f"could not save checkpoint {tag} in {where}: {e}; {last_good(output_dir)}. Fix the cause and "
            "continue with --resume auto")


def _nearly_full(directory: Path) -> bool:
    try:
        return shutil.disk_usage(directory).free < 64 << 20
    except OSError:
        return False


def last_good(output_dir: str | Path) -> str:
    """The newest complete checkpoint that verifies (sizes and checksums), naming any newer damaged one."""
    damaged = []
    for path in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(path)[1]
        if problem is None:
            return f"the last good checkpoint is {path}" + (f" (after it, {'; '.join(damaged)})" if damaged else "")
        damaged.append(f"{path} is damaged: {problem}")
    if damaged:
        return f"there is no intact checkpoint ({'; '.join(damaged)})"
    return "there is no earlier complete checkpoint"


def _agreed(value: Any) -> Any:
    """Rank 0's `value`, on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _first_failure(failure: str | None) -> str | None:
    """The first rank's failure message (None when every rank succeeded), on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return failure
    every: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(every, failure)
    return next((f for f in every if f is not None), None)


def weights_finite(engine) -> bool:
    """Whether every parameter of the engine's module has a finite float32 norm, on every rank (one all-reduce)."""
    bad = nonfinite_weights(engine.module, engine.device if hasattr(engine, "device") else None)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bad.item() == 0


def nonfinite_weights(module: torch.nn.Module, device: torch.device | None = None) -> torch.Tensor:
    """1.0 (a device scalar, nothing waits for it) when some parameter of `module` has a non-finite float32 norm.

    One fused `torch._foreach_norm` over this rank's parameters (under ZeRO-3 its partitions). A finite norm
    means finite values and none past ~1e19 (its square overflows float32): weights beyond that come only from
    a diverged step, whose next forward pass is not finite.
    """
    params = [getattr(p, "ds_tensor", p).detach() for p in module.parameters()]
    params = [p for p in params if p.numel()]
    if device is None:
        device = params[0].device if params else torch.device("cpu")
    if not params:
        return torch.zeros((), device=device)
    norms = torch._foreach_norm(params, 2, dtype=torch.float32)
    return (~torch.isfinite(torch.stack([n.to(device) for n in norms]))).any().float()


# --------------------------------------------------------------------------- resume
def check_resume_compatible(path: Path, cfg: DistillConfig, teacher_config=None) -> dict[str, Any]:
    """The checkpoint's COMPLETE record (verified); ConfigError when it was made with another model shape,
    another teacher, other data or another window length (`resume_differences`)."""
    saved = verify_checkpoint(path)
    _check_compatible(path, saved, cfg, teacher_config)
    return saved


def _check_compatible(path: Path, saved: dict[str, Any], cfg: DistillConfig, teacher_config) -> None:
    diffs, flags = resume_differences(saved, cfg, teacher_config)
    if diffs:
        settings = f" ({' '.join(flags)})" if flags else ""
        raise ConfigError(f"cannot resume {path}: it was made with other settings than this run:\n  - "
                          + "\n  - ".join(diffs)
                          + f"\nresume with the checkpoint's settings{settings} or start a new --output_dir")
    if not isinstance(saved.get("provenance"), dict):
        _note(f"checkpoint {path} records no teacher or data fingerprint (saved by an older distill): could not "
              "check that this run uses the same teacher and data")


def resume_differences(saved: dict[str, Any], cfg: DistillConfig, teacher_config=None) -> tuple[list[str], list[str]]:
    """What differs between a checkpoint's record and this run (the model shape, the teacher by content, the
    data by its manifest, the window length), and the checkpoint's values of those settings as flags.

    With the teacher's (untruncated) config, resolved shape values are compared, not spellings: teacher_layer
    None and the teacher's last layer are the same shape (`resolved_shape`).
    """
    before, now = saved["config"], cfg.to_dict()
    if teacher_config is not None:
        before, now = resolved_shape(before, teacher_config), resolved_shape(now, teacher_config)
    diffs = shape_differences(before, now)
    flags = [f"--{k} {before[k]}" for k in _differing_shape_fields(before, now) if before[k] is not None]
    had, has = saved.get("provenance") or {}, run_provenance(cfg, teacher=isinstance(saved.get("provenance"), dict))
    a, b = had.get("teacher_fingerprint"), has["teacher_fingerprint"]
    if isinstance(a, str) and b and not _same_teacher(a, b):
        diffs.append(f"teacher: checkpoint {had.get('teacher')} (fingerprint {_short(a)}), this run {cfg.teacher} "
                     f"(fingerprint {_short(b)}): other weights or config")
        flags.append(f"--teacher {had.get('teacher')}")
    a, b = had.get("data_manifest_sha256"), has["data_manifest_sha256"]
    if isinstance(a, str) and b and a != b:
        diffs.append(f"data: the manifest of the checkpoint's --data {had.get('data')} (sha256 {a[:16]}) differs from "
                     f"that of this run's {cfg.data} (sha256 {b[:16]}): other shards")
        flags.append(f"--data {had.get('data')}")
    window = had.get("max_seq_len", saved["config"].get("max_seq_len"))
    if window is not None and window != cfg.max_seq_len:
        diffs.append(f"max_seq_len: checkpoint {window}, this run {cfg.max_seq_len}")
        flags.append(f"--max_seq_length {window}")
    return diffs, flags


def find_resume(cfg: DistillConfig, teacher_config=None) -> Path | None:
    """The checkpoint `cfg.resume` names (None: a fresh start), verified and checked against this run
    (`check_resume_compatible`). Rank 0 checks (reading every checksum once, not once per rank); every rank gets
    its answer, or its error."""
    outcome: tuple[Path | None, BaseException | None] = (None, None)
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            path, record = _resolve(cfg.resume, cfg.output_dir)
            if path is not None:
                _check_compatible(path, record, cfg, teacher_config)
            outcome = (path, None)
        except Exception as e:
            if not (dist.is_initialized() and dist.get_world_size() > 1):
                raise
            outcome = (None, _portable(e))
    path, error = _agreed(outcome)
    if error is not None:
        raise error
    return path


def _portable(error: BaseException) -> BaseException:
    """`error`, or a RuntimeError saying it, where it cannot be sent to the other ranks."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def load_train_state(engine, path: Path) -> TrainState:
    """Load the engine's weights and optimizer from checkpoint `path`; return the run's position."""
    try:
        _, client = engine.load_checkpoint(str(path.parent), tag=path.name)
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # torch.load of a damaged file
        raise CheckpointError(f"cannot load checkpoint {path}: {e}; {_previous(path)}") from e
    if client is None:
        raise CheckpointError(f"cannot load checkpoint {path}: DeepSpeed found no model states in it; "
                              f"{_previous(path)}")
    return TrainState(**client["state"])


def restore_rng_state(path: Path, rank: int) -> None:
    """This rank's Python, NumPy, torch (and CUDA) generators as they were when `path` was saved."""
    set_rng_state(torch.load(rng_file(path, rank), weights_only=False))


# --------------------------------------------------------------------------- directories
_TAG = re.compile(r"^step-(\d{8})$")
_LEFTOVER = re.compile(r"^\.step-\d{8}\.tmp-[0-9a-f]+$")  # a save that did not finish


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def tag_for_step(step: int) -> str:
    return f"step-{step:08d}"


def step_of(path: Path) -> int:
    return int(_TAG.match(path.name).group(1))


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def list_checkpoints(output_dir: str | Path, complete_only: bool = True) -> list[Path]:
    """Checkpoint directories (marked COMPLETE, unless complete_only=False), oldest first; markers not read."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _TAG.match(p.name)]
    if complete_only:
        found = [p for p in found if is_complete(p)]
    return sorted(found, key=step_of)


def newest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run directory, verified (CheckpointError if damaged); None if none."""
    return _newest_verified(output_dir)[0]


def _newest_verified(output_dir: str | Path) -> tuple[Path | None, dict[str, Any] | None]:
    done = list_checkpoints(output_dir)
    if not done:
        return None, None
    return done[-1], verify_checkpoint(done[-1])


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """`--resume auto` -> newest complete checkpoint (or None: a fresh start); a path -> checked.

    The checkpoint returned is verified (`verify_checkpoint`): a damaged one is a CheckpointError.
    """
    return _resolve(resume, output_dir)[0]


def _resolve(resume: str | None, output_dir: str | Path) -> tuple[Path | None, dict[str, Any] | None]:
    """`resolve_resume`'s checkpoint and its verified COMPLETE record (each file read once)."""
    if resume is None:
        return None, None
    if resume == "auto":
        return _newest_verified(output_dir)
    path = Path(resume)
    if path.is_dir() and not _TAG.match(path.name):
        newest = _newest_verified(path)  # an output_dir was given: take its newest
        if newest[0] is not None:
            return newest
    if not path.is_dir():
        raise ConfigError(f"--resume {resume}: no such checkpoint directory; use --resume auto to take the "
                          f"newest complete one in --output_dir")
    if not is_complete(path):
        raise CheckpointError(f"--resume {resume}: this checkpoint is incomplete (no {COMPLETE} marker: the run died "
                              f"while writing it); resume from an earlier one or use --resume auto")
    return path, verify_checkpoint(path)


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """The COMPLETE record of checkpoint `path`, checked: valid JSON with its keys, every listed file whole (its
    size and, where the record has them, its sha256; a record without checksums gets a note).

    CheckpointError names the damaged file and the previous complete checkpoint.
    """
    record, problem = checkpoint_problem(path)
    if problem is not None:
        raise CheckpointError(f"{problem}: checkpoint {path} is damaged; {_previous(path)}")
    if not isinstance(record.get("sha256"), dict):
        _note(f"checkpoint {path} records no checksums (saved by an older distill): only the file sizes were "
              "checked")
    return record


def checkpoint_problem(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the COMPLETE record of `path`, None) when it and every file it lists are whole; else (the record or None,
    what is wrong, naming the file)."""
    marker = Path(path) / COMPLETE
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problem = "is empty" if marker.is_file() and marker.stat().st_size == 0 else f"cannot be read as JSON ({e})"
        return None, f"{marker} {problem}"
    return record, _record_problem(record) or _files_problem(Path(path), record)


def _files_problem(path: Path, record: dict[str, Any]) -> str | None:
    """The first listed file that is missing, of another size, or of another sha256."""
    for name, size in (record.get("files") or {}).items():
        file = path / name
        actual = file.stat().st_size if file.is_file() else None
        if actual != size:
            return (f"{file} is missing" if actual is None
                    else f"{file} holds {actual} bytes, not the {size} its {COMPLETE} marker records")
    for name, digest in (record.get("sha256") or {}).items():
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        if file_sha256(file) != digest:
            return (f"{file} does not match the sha256 its {COMPLETE} marker records (its contents changed after it "
                    "was saved)")
    return None


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"{COMPLETE} marker holds {type(record).__name__}, not a JSON object"
    missing = [k for k in ("state", "config") if not isinstance(record.get(k), dict)]
    missing += [f"state.{k}" for k in ("step", "samples", "epoch", "epoch_offset")
                if "state" not in missing and not isinstance(record["state"].get(k), int)]
    if missing:
        return f"its {COMPLETE} marker lacks {', '.join(missing)}"
    for key in ("files", "sha256", "provenance"):
        if not isinstance(record.get(key) or {}, dict):  # provenance is null where rank 0 could not read it
            return f"its {COMPLETE} marker's {key} entry is not a JSON object"
    if not all(isinstance(v, str) for v in (record.get("sha256") or {}).values()):
        return f"its {COMPLETE} marker's sha256 entry holds a value that is not a hex digest"
    return None


_NOTED: set[str] = set()


def _note(message: str) -> None:
    """Print `note: message` once per process, on rank 0 only."""
    if message in _NOTED or (dist.is_initialized() and dist.get_rank() != 0):
        return
    _NOTED.add(message)
    print(f"note: {message}", flush=True)


def _previous(path: Path) -> str:
    """Where to go instead of the damaged checkpoint `path`: the complete one before it, if any."""
    path = Path(path)
    if not _TAG.match(path.name):
        return "resume from or export another checkpoint"
    earlier = [p for p in list_checkpoints(path.parent.parent) if step_of(p) < step_of(path)]
    if not earlier:
        return "there is no earlier complete checkpoint in this run"
    return f"the previous complete checkpoint is {earlier[-1]}: resume with --resume {earlier[-1]} or export it"


def mark_complete(path: Path, info: dict[str, Any]) -> None:
    atomic_write_json(path / COMPLETE, info)


def rotate(output_dir: str | Path, keep: int | None) -> list[Path]:
    """Delete unfinished saves, incomplete checkpoints and all but the newest `keep` complete ones (rank 0 only)."""
    removed = []
    root = checkpoints_dir(output_dir)
    leftovers = [p for p in root.iterdir() if _LEFTOVER.match(p.name)] if root.is_dir() else []
    incomplete = [p for p in list_checkpoints(output_dir, complete_only=False) if not is_complete(p)]
    for p in leftovers + incomplete:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    if keep is not None:
        for p in list_checkpoints(output_dir)[:-keep]:
            (p / COMPLETE).unlink(missing_ok=True)  # first: a half-deleted dir is never taken as complete
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


# --------------------------------------------------------------------------- the output directory
def check_output_dir(cfg: DistillConfig) -> None:
    """Before any work: `output_dir` is (or can be made) a writable directory, and a fresh run does not take
    over another run's files (ConfigError naming the choices)."""
    out = Path(cfg.output_dir)
    problem = output_dir_problem(out, "--output_dir")
    if problem:
        raise ConfigError(problem)
    if cfg.overwrite_output_dir and cfg.resume is not None:
        raise ConfigError("--overwrite_output_dir deletes the checkpoints that --resume would continue from: "
                          "give one of the two")
    ours = [name for name in ("run_config.json", "checkpoints") if (out / name).exists()]
    if ours and cfg.resume is None and not cfg.overwrite_output_dir:
        raise ConfigError(f"--output_dir {out} already holds a run ({', '.join(ours)}): continue it with "
                          "--resume auto, choose a new --output_dir, or pass --overwrite_output_dir to delete that "
                          "run's files (run_config.json, student_config/, checkpoints/, tensorboard/ and its "
                          "exported student), leaving anything else in it alone")


def clear_run_files(output_dir: str | Path, export_dir: str | Path) -> list[Path]:
    """Rank 0, for --overwrite_output_dir after every check passed: delete this package's files in
    `output_dir` (RUN_FILES, `export_dir` when it is an export of this package, and the hidden temporary
    directories of an export or skeleton write that was killed halfway), nothing else."""
    out = Path(output_dir)
    removed = []
    candidates = [out / name for name in RUN_FILES]
    if (Path(export_dir) / EXPORT_MARKER).is_file():
        candidates.append(Path(export_dir))
    for made in (out / "student_config", Path(export_dir)):  # what an export killed halfway left (export.py's names)
        candidates += sorted(made.parent.glob(f".{made.name}.*.tmp")) + sorted(made.parent.glob(f".{made.name}.*.old"))
    for p in candidates:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(p)
    fsync_dir(out)
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


def resolved_shape(config: dict[str, Any], teacher_config) -> dict[str, Any]:
    """The SHAPE_FIELDS of a run config with its defaults resolved against the teacher: teacher_layer None is the
    teacher's last layer, student_intermediate_size None the width x the teacher's feed-forward ratio."""
    from .encoders import get_adapter

    adapter = get_adapter(teacher_config)
    shape = {k: config.get(k) for k in SHAPE_FIELDS}
    if shape["teacher_layer"] is None:
        shape["teacher_layer"] = adapter.num_layers(teacher_config)
    width = shape["student_hidden_size"]
    if shape["student_intermediate_size"] is None and isinstance(width, int):
        ratio = adapter.intermediate_size(teacher_config) / adapter.hidden_size(teacher_config)
        shape["student_intermediate_size"] = max(1, round(width * ratio))  # as distill.student.create_student
    return shape


def shape_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Fields that define the model's shape and differ between a checkpoint and this run."""
    return [f"{k}: checkpoint {saved.get(k)!r}, this run {current.get(k)!r}"
            for k in _differing_shape_fields(saved, current)]


def _differing_shape_fields(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [k for k in SHAPE_FIELDS if k in saved and saved.get(k) != current.get(k)]


# --------------------------------------------------------------------------- provenance and checksums
def run_provenance(cfg: DistillConfig, teacher: bool = True) -> dict[str, Any]:
    """What a checkpoint records of where its state came from: the teacher (`teacher_fingerprint`; None with
    teacher=False, or when its files cannot be read), --data and the sha256 of its manifest, --max_seq_length."""
    return {"teacher": cfg.teacher, "teacher_fingerprint": teacher_fingerprint(cfg.teacher) if teacher else None,
            "data": cfg.data, "data_manifest_sha256": data_fingerprint(cfg.data), "max_seq_len": cfg.max_seq_len}


_FINGERPRINTS: dict[tuple, str] = {}  # (directory, its files' names, sizes and mtimes) -> fingerprint


def teacher_fingerprint(source: str) -> str | None:
    """The teacher by content: for a local directory, the sha256 over its config.json and weight files
    (WEIGHT_SUFFIXES; tokenizer files do not count), computed once per process while the files' sizes and mtimes
    stay; for a hub name, "hub:NAME@COMMIT" with the snapshot in the local Hugging Face cache, else "hub:NAME".
    None when the directory cannot be read."""
    local = Path(os.path.expanduser(source))
    if not local.is_dir():
        return _hub_fingerprint(source)
    try:
        files = sorted(p for p in local.iterdir()
                       if p.is_file() and (p.name == "config.json" or p.suffix in WEIGHT_SUFFIXES))
        stats = [(p, p.stat()) for p in files]
        key = (str(local.resolve()),) + tuple((p.name, st.st_size, st.st_mtime_ns) for p, st in stats)
        if key not in _FINGERPRINTS:
            digest = hashlib.sha256()
            for p, st in stats:
                digest.update(f"{p.name}\0{st.st_size}\0{file_sha256(p)}\n".encode())
            _FINGERPRINTS[key] = digest.hexdigest()
        return _FINGERPRINTS[key]
    except OSError:
        return None


def _hub_fingerprint(name: str) -> str:
    try:
        import huggingface_hub

        found = huggingface_hub.try_to_load_from_cache(repo_id=name, filename="config.json")
    except Exception:  # not a valid repo id, or a huggingface_hub without the cache API: the name alone
        found = None
    return f"hub:{name}@{Path(found).parent.name}" if isinstance(found, str) else f"hub:{name}"


def _same_teacher(a: str, b: str) -> bool:
    """Whether two fingerprints may be the same teacher: equal, or one hub name with a snapshot known on one side
    only (then the commit cannot be compared)."""
    if a == b:
        return True
    if a.startswith("hub:") and b.startswith("hub:"):
        (name_a, _, commit_a), (name_b, _, commit_b) = a.partition("@"), b.partition("@")
        return name_a == name_b and not (commit_a and commit_b)
    return False


def _short(fingerprint: str) -> str:
    return fingerprint if fingerprint.startswith("hub:") else fingerprint[:16]


def data_fingerprint(data: str) -> str | None:
    """The sha256 of the shard directory's manifest (None without --data, or when it cannot be read)."""
    if not data:
        return None
    try:
        return file_sha256(Path(os.path.expanduser(data)) / MANIFEST_NAME)
    except OSError:
        return None


def file_records(directory: Path) -> dict[str, dict[str, Any]]:
    """The COMPLETE record's entries for the files under `directory`: {"files": {name: bytes}, "sha256": {name:
    hex digest}}."""
    files = {str(p.relative_to(directory)): p for p in sorted(Path(directory).rglob("*")) if p.is_file()}
    return {"files": {name: p.stat().st_size for name, p in files.items()},
            "sha256": {name: file_sha256(p) for name, p in files.items()}}


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
