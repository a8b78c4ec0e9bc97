"""Checkpoint -> a Hugging Face model directory (weights, config, tokenizer).

Works for ZeRO stages 0-3: the fp32 weights are rebuilt from the checkpoint's files with
DeepSpeed's own `get_fp32_state_dict_from_zero_checkpoint`, so no GPU and no process group
are needed. The student's config and tokenizer come from `OUTPUT_DIR/student_config`,
written at the start of the run. `main` is the command (`distill-export`, tools/export_student.py).

The export never loses what is at its target: it is written beside it (a temporary directory in
the same parent) and moved in only where the target is missing, an empty directory, or an
earlier export holding nothing else (known by the EXPORT_MARKER file each export writes, which
lists its files); anything else is refused before the weights are rebuilt. An earlier export is
swapped for the new one atomically (renameat2 RENAME_EXCHANGE on Linux; elsewhere: the old one
renamed aside, the new one renamed in, the old one deleted). The directory and its files get
the permissions of the user's umask.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .paths import apply_umask, is_no_space, no_space_message, output_dir_problem
from .shards import atomic_write_json, fsync_dir

EXPORT_MARKER = ".distill-export.json"
EXPORT_FORMAT = "distill-export"


def save_student_skeleton(student, tokenizer_source, directory: str | Path) -> None:
    """The student's config.json and the tokenizer, what export needs besides the weights."""
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    directory = Path(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        student.config.save_pretrained(tmp)
        tok = tokenizer_source if isinstance(tokenizer_source, PreTrainedTokenizerBase) \
            else AutoTokenizer.from_pretrained(tokenizer_source)
        tok.save_pretrained(tmp)
        apply_umask(tmp)
        _move_into_place(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where not supported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _move_into_place(tmp: Path, target: Path) -> None:
    """Move the finished directory `tmp` to `target` (missing, an empty directory, or ours to replace).

    A directory in `target` is swapped for `tmp` in one step where the platform allows, else renamed
    aside first; it is deleted only once the new one is in place.
    """
    if target.is_dir() and any(target.iterdir()):
        if _exchange(tmp, target):
            fsync_dir(target.parent)
            shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
            return
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old)  # onto the empty directory just made
        os.replace(tmp, target)
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(tmp, target)  # missing, or an empty directory
    fsync_dir(target.parent)


def check_export_target(out_dir: str | Path, flag: str = "--export_dir") -> None:
    """ValueError (naming what is there and the fix) unless an export may be written to `out_dir`:
    missing, an empty directory, or an earlier export holding only the files it wrote."""
    out = Path(out_dir)
    if out.is_symlink():
        raise ValueError(f"{flag} {out} is a symbolic link; give the directory it points to, or another {flag}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file; choose another {flag} (or move the file away)")
    problem = output_dir_problem(out.parent, f"{flag}'s parent")
    if problem:
        raise ValueError(problem)
    if not out.is_dir():
        return
    names = sorted(p.name for p in out.iterdir())
    try:
        marker = json.loads((out / EXPORT_MARKER).read_text(encoding="utf-8"))
        ours = set(marker["files"]) | {EXPORT_MARKER} if marker.get("format") == EXPORT_FORMAT else set()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ours = set()
    others = [n for n in names if n not in ours]
    if others:
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ValueError(f"{flag} {out} holds files this export did not write ({listed}); nothing was changed: "
                         f"choose another {flag}, or move those files (or the directory) away")


def checkpoint_state_dict(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """fp32 student weights of a DeepSpeed checkpoint directory (a `step-...` tag dir)."""
    checkpoint_dir = Path(checkpoint_dir)
    optim_files = list(checkpoint_dir.glob("*optim_states.pt"))
    if optim_files and any("zero" in p.name for p in optim_files):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir.parent), tag=checkpoint_dir.name)
    model_files = sorted(checkpoint_dir.glob("mp_rank_*_model_states.pt"))
    if not model_files:
        raise FileNotFoundError(f"{checkpoint_dir} holds no DeepSpeed model states; give a checkpoint directory "
                                "such as OUTPUT_DIR/checkpoints/step-00001000")
    states = torch.load(model_files[0], map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in states["module"].items()}


def _write_export(model, skeleton: Path, checkpoint_dir: Path, out_dir: Path, flag: str) -> None:
    """The model, its tokenizer and EXPORT_MARKER in a temporary directory beside `out_dir`, then moved in."""
    from transformers import AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(skeleton).save_pretrained(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        for name in files:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        atomic_write_json(tmp / EXPORT_MARKER, {
            "format": EXPORT_FORMAT, "checkpoint": str(checkpoint_dir.resolve()),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "files": files})
        apply_umask(tmp)
        check_export_target(out_dir, flag)  # again: something may have appeared there meanwhile
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, skeleton_dir: str | Path | None = None,
                      flag: str = "--export_dir") -> Path:
    """Write `out_dir` (atomically) with the student of `checkpoint_dir`: loadable by AutoModel/AutoTokenizer.

    ValueError before any work when `out_dir` holds anything but an earlier export (see the module
    docstring; `flag` names it in messages), and on a full disk (`out_dir` then left as it was).
    """
    from transformers import AutoConfig, AutoModel

    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if not ckpt.is_complete(checkpoint_dir):
        raise ValueError(f"{checkpoint_dir} is not a complete checkpoint (no {ckpt.COMPLETE} marker); "
                         "export an earlier one")
    ckpt.verify_checkpoint(checkpoint_dir)  # a damaged marker or a truncated file: named, with the previous one
    check_export_target(out_dir, flag)
    skeleton = Path(skeleton_dir) if skeleton_dir else checkpoint_dir.parent.parent / "student_config"
    if not (skeleton / "config.json").is_file():
        raise FileNotFoundError(f"{skeleton} has no config.json; pass the run's OUTPUT_DIR/student_config")
    config = AutoConfig.from_pretrained(skeleton)
    model = AutoModel.from_config(config)
    state = checkpoint_state_dict(checkpoint_dir)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{checkpoint_dir} does not match the student config in {skeleton}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    try:
        _write_export(model, skeleton, checkpoint_dir, out_dir, flag)
    except OSError as e:
        if not is_no_space(e):
            raise
        raise ValueError(no_space_message(f"the export of {checkpoint_dir}", e,
                                          f"{out_dir} was left as it was (the partial export was removed); "
                                          f"free space, or choose another {flag}, and export again")) from e
    return out_dir


CLI_DESCRIPTION = """Export a distillation checkpoint as a Hugging Face model directory.

    %(prog)s runs/minilm/checkpoints/step-00010000 --out my-student
    %(prog)s runs/minilm --out my-student      # the newest complete checkpoint

Works for every ZeRO stage (the fp32 weights are rebuilt from the checkpoint files) on CPU.
The result loads with AutoModel.from_pretrained and AutoTokenizer.from_pretrained.

--out must be missing, an empty directory, or an earlier export (which is replaced): a directory
holding anything else, or a file, is refused and left as it is. The export is written beside
--out and moved in when complete; it lists its files in --out/""" + EXPORT_MARKER + "."


def resolve_source(path: Path) -> Path:
    """The checkpoint to export: `path` itself, or a run directory's newest complete checkpoint."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint or run directory")
    if (path / "checkpoints").is_dir():
        newest = ckpt.newest_checkpoint(path)  # verified: a damaged one is named, with the previous one
        if newest is not None:
            return newest
        unfinished = [p.name for p in ckpt.list_checkpoints(path, complete_only=False)]
        found = (f"{', '.join(unfinished)} {'is' if len(unfinished) == 1 else 'are'} unfinished (no "
                 f"{ckpt.COMPLETE} marker: the run died while writing)" if unfinished else "it holds none")
        raise ValueError(f"{path} has no complete checkpoint in {path / 'checkpoints'} ({found}); "
                         "resume the run to save one, or export another run")
    if path.is_dir() and (path.parent.name == "checkpoints" or ckpt.is_complete(path)
                          or any(path.glob("*model_states.pt"))):
        return path
    raise ValueError(f"{path} is neither a checkpoint directory (OUTPUT_DIR/checkpoints/step-N) nor a run "
                     "directory (an OUTPUT_DIR holding checkpoints/); give one of those")


def main(argv: list[str] | None = None) -> int:
    """`distill-export CHECKPOINT_OR_RUN_DIR --out DIR`; 0 done, 2 bad input (`error: ...` on stderr)."""
    p = argparse.ArgumentParser(description=CLI_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint directory (OUTPUT_DIR/checkpoints/step-N) or a run's OUTPUT_DIR")
    p.add_argument("--out", required=True,
                   help="the Hugging Face model directory to write: missing, empty, or an earlier export")
    p.add_argument("--student_config",
                   help="the run's OUTPUT_DIR/student_config (found next to the checkpoint by default)")
    args = p.parse_args(argv)
    try:
        path = resolve_source(Path(args.checkpoint))
        out = export_checkpoint(path, args.out, skeleton_dir=args.student_config, flag="--out")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {path} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
