"""Checkpoint -> a Hugging Face model directory (weights, config, tokenizer).

Works for ZeRO stages 0-3: the fp32 weights are rebuilt from the checkpoint's files with
DeepSpeed's own `get_fp32_state_dict_from_zero_checkpoint`, so no GPU and no process group
are needed. The student's config and tokenizer come from `OUTPUT_DIR/student_config`,
written at the start of the run. `main` is the command (`distill-export`, tools/export_student.py).

The export never loses what is at its target: it is written beside it (a temporary directory in the same
parent) and moved in only where the target is missing, an empty directory, or an earlier export holding
nothing else (known by the EXPORT_MARKER file each export writes, which lists its files); anything else is
refused before the weights are rebuilt, and so is a target in a run's checkpoints (a `checkpoints` folder next
to a run_config.json, a folder of step-N checkpoints, or a checkpoint: rotation and --overwrite_output_dir
delete them) or, for a run's --export_dir, in the files the run writes in its output_dir
(`check_export_target`). A student the export could not rebuild from its config is refused before the run
writes anything (`check_student_exportable`). A full disk leaves nothing behind, and the error names the
directory and its free space. An earlier export is swapped for the new one atomically (renameat2
RENAME_EXCHANGE on Linux; elsewhere: the old one renamed aside, the new one renamed in, the old one deleted).
The directory and its files get the permissions of the user's umask.

With a sentence-transformers teacher (or `export_format="sentence-transformers"`) the directory is also a
sentence-transformers model: the modules kept in `student_config` at the start of the run are written around the
encoder (`distill.sentence_transformers_io`), in the same temporary directory and under the same marker.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import sentence_transformers_io as st_io
from .cli_args import add_arguments, option
from .embedding_loss import PROJECTION_ATTRIBUTE
from .errors import DistillError, ExportError
from .io import atomic_write_json, fsync_dir, fsync_tree
from .paths import EXPORT_MARKER, apply_umask, is_no_space, model_load_error, nearest_existing, output_dir_problem

EXPORT_FORMAT = "distill-export"


def save_student_skeleton(student, tokenizer_source, directory: str | Path,
                          modules: st_io.Modules | None = None) -> None:
    """The student's config.json and the tokenizer, what export needs besides the weights; and `modules`, the
    sentence-transformers modules to export (`st_io.read_teacher_modules`), in its SKELETON_DIR folder."""
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    check_student_exportable(student)
    directory = Path(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        student.config.save_pretrained(tmp)
        try:
            tok = tokenizer_source if isinstance(tokenizer_source, PreTrainedTokenizerBase) \
                else AutoTokenizer.from_pretrained(tokenizer_source)
        except OSError as e:  # a teacher without a tokenizer, a hub name not reachable
            raise model_load_error("the tokenizer of", tokenizer_source, e) from e
        tok.save_pretrained(tmp)
        if modules is not None:
            modules.save(tmp / st_io.SKELETON_DIR)
        fsync_tree(tmp)
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


def check_export_target(out_dir: str | Path, flag: str = "--export_dir", output_dir: str | Path | None = None) -> None:
    """ExportError (naming what is there and the fix) unless an export may be written to `out_dir`:
    missing, an empty directory, or an earlier export holding only the files it wrote; and not inside a
    run's checkpoints (which rotation and --overwrite_output_dir delete) or, given the run's `output_dir`,
    inside the files the run writes there (`run_files_problem`)."""
    out = Path(out_dir)
    problem = run_files_problem(out, flag, output_dir) or checkpoints_problem(out, flag)
    if problem:
        raise ExportError(problem)
    if out.is_symlink():
        raise ExportError(f"{flag} {out} is a symbolic link; give the directory it points to, or another {flag}")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{flag} {out} is a file; choose another {flag} (or move the file away)")
    problem = output_dir_problem(out.parent, f"{flag}'s parent")
    if problem:
        raise ExportError(problem)
    if not out.is_dir():
        return
    try:
        marker = json.loads((out / EXPORT_MARKER).read_text(encoding="utf-8"))
        ours = set(marker["files"]) | {EXPORT_MARKER} if marker.get("format") == EXPORT_FORMAT else set()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ours = set()
    others = _unlisted(out, ours)
    if others:
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ExportError(f"{flag} {out} holds files this export did not write ({listed}); nothing was changed: "
                          f"choose another {flag}, or move those files (or the directory) away")


_CHECKPOINT_DIR = re.compile(r"^\.?step-\d{8}($|\.tmp-)")  # checkpoint.tag_for_step's names, and saves under way


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(path)))


def run_files_problem(out: Path, flag: str, output_dir: str | Path | None) -> str | None:
    """Why an export to `out` would be mixed with the files a run writes in `output_dir` (checkpoint.RUN_FILES),
    or would hold that run; None: it would not (or no `output_dir` is given)."""
    if output_dir is None:
        return None
    target, run = _real(out), _real(output_dir)
    if target == run or target in run.parents:
        return (f"{flag} {out} would hold the run's own files (--output_dir {output_dir}): the export replaces "
                f"what is there; choose an {flag} outside them, e.g. {Path(output_dir) / 'student'}")
    for name in ckpt.RUN_FILES:
        if target == run / name or run / name in target.parents:
            return (f"{flag} {out} is inside the run's own {name} ({Path(output_dir) / name}), which the run writes "
                    f"(and checkpoint rotation or --overwrite_output_dir deletes); choose an {flag} outside it, "
                    f"e.g. {Path(output_dir) / 'student'}")
    return None


def checkpoints_problem(out: Path, flag: str) -> str | None:
    """Why `out` is no place for an export: it is, or is inside, a run's checkpoints directory (a `checkpoints`
    folder next to a run_config.json, or any folder holding step-N checkpoints) or a checkpoint (a folder with a
    COMPLETE marker or DeepSpeed model states); None: it is neither."""
    target = _real(out)
    for folder in (target, *target.parents):
        if _is_checkpoints_dir(folder):
            what = "a run's checkpoints directory"
        elif folder.is_dir() and (ckpt.is_complete(folder) or any(folder.glob("*model_states.pt"))):
            what = "a checkpoint"
        else:
            continue
        where = "is" if folder == target else f"is inside {folder},"
        return (f"{flag} {out} {where} {what}, which checkpoint rotation (--save_total_limit) and "
                f"--overwrite_output_dir delete; choose an {flag} outside the run's checkpoints, e.g. "
                f"{_run_of(folder) / 'student'}")
    return None


def _is_checkpoints_dir(folder: Path) -> bool:
    if folder.name == "checkpoints" and (folder.parent / "run_config.json").is_file():
        return True
    try:
        return any(_CHECKPOINT_DIR.match(p.name) and p.is_dir() for p in folder.iterdir())
    except OSError:  # missing, not a directory, not readable
        return False


def _run_of(folder: Path) -> Path:
    """The run directory holding a checkpoints directory (or a checkpoint in it): where its export usually goes."""
    for p in (folder, *folder.parents):
        if p.name == "checkpoints" or _is_checkpoints_dir(p):
            return p.parent
    return folder.parent


def check_student_exportable(student) -> None:
    """ExportError (naming the problem and the fix) unless the export can rebuild `student` from its saved config:
    a Hugging Face model whose config AutoModel turns into a model with the student's weights (same names)."""
    name = type(student).__name__
    config = getattr(student, "config", None)
    if not callable(getattr(config, "save_pretrained", None)) or not callable(getattr(student, "state_dict", None)):
        raise ExportError(f"the student ({name}) cannot be exported: it is not a Hugging Face model (no config with "
                          "save_pretrained); give a transformers PreTrainedModel, e.g. distill.create_student(...)")
    from transformers import AutoModel

    try:
        with torch.device("meta"):
            rebuilt = AutoModel.from_config(config)
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        raise ExportError(f"the student ({name}) cannot be exported: AutoModel.from_config cannot build a model of "
                          f"its config {type(config).__name__} ({e}); give a model of an architecture transformers "
                          "knows") from None
    want, have = _weight_names(rebuilt), _weight_names(student)
    if want != have:
        hint = ("; give its base encoder (student.base_model)" if getattr(student, "base_model", student) is not student
                else "; give the model AutoModel.from_config(student.config) builds")
        raise ExportError(f"the student ({name}) cannot be exported: the export rebuilds it with "
                          f"AutoModel.from_config as {type(rebuilt).__name__}, whose weights are named otherwise "
                          f"(missing {sorted(want - have)[:3]}, unexpected {sorted(have - want)[:3]}){hint}")


def _weight_names(model) -> set[str]:
    """The names the export compares: not the position-id buffers, nor the embedding loss's projection."""
    return {k for k in model.state_dict() if not k.endswith("position_ids") and not k.startswith(PROJECTION_ATTRIBUTE)}


def _unlisted(directory: Path, listed: set[str], prefix: str = "") -> list[str]:
    """What is in `directory` but not in `listed` (paths relative to the export, files only): a folder is looked
    into when something listed is in it, else named as a whole."""
    found = []
    for p in sorted(directory.iterdir()):
        name = prefix + p.name
        real_dir = p.is_dir() and not p.is_symlink()
        if real_dir and any(f.startswith(f"{name}/") for f in listed):
            found += _unlisted(p, listed, f"{name}/")
        elif real_dir or name not in listed:
            found.append(name)
    return found


def checkpoint_state_dict(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """fp32 student weights of a DeepSpeed checkpoint directory (a `step-...` tag dir)."""
    checkpoint_dir = Path(checkpoint_dir)
    optim_files = list(checkpoint_dir.glob("*optim_states.pt"))
    if optim_files and any("zero" in p.name for p in optim_files):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir.parent), tag=checkpoint_dir.name)
    model_files = sorted(checkpoint_dir.glob("mp_rank_*_model_states.pt"))
    if not model_files:
        raise ExportError(f"{checkpoint_dir} holds no DeepSpeed model states; give a checkpoint directory "
                          "such as OUTPUT_DIR/checkpoints/step-00001000")
    states = torch.load(model_files[0], map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in states["module"].items()}


def _write_export(model, skeleton: Path, checkpoint_dir: Path, out_dir: Path, flag: str,
                  modules: st_io.Modules | None = None, projection: torch.Tensor | None = None,
                  output_dir: Path | None = None) -> list[str]:
    """The model, its tokenizer, the sentence-transformers `modules` (if any) and EXPORT_MARKER in a temporary
    directory beside `out_dir`, then moved in. Returns the notes on modules left out. On any failure nothing is
    left behind: neither the temporary directory nor the (empty) folders made for `out_dir`'s parent."""
    from transformers import AutoTokenizer

    from .encoders import get_adapter

    made = _missing_folders(out_dir.parent)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(skeleton)
        tokenizer.save_pretrained(tmp)
        notes = []
        if modules is not None:
            layout, notes = st_io.student_files(modules, get_adapter(model.config).hidden_size(model.config),
                                                st_io.max_seq_length(model.config, tokenizer), projection)
            for name, data in layout.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(data)
        files = fsync_tree(tmp)
        atomic_write_json(tmp / EXPORT_MARKER, {
            "format": EXPORT_FORMAT, "checkpoint": str(checkpoint_dir.resolve()),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "layout": "hf" if modules is None else "sentence-transformers", "files": files})
        apply_umask(tmp)
        check_export_target(out_dir, flag, output_dir)  # again: something may have appeared there meanwhile
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # deepest first; one that holds something now is kept
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return notes


def _missing_folders(directory: Path) -> list[Path]:
    """The folders a `mkdir -p directory` would make, deepest first."""
    directory = Path(os.path.abspath(directory))
    base = nearest_existing(directory)
    return [p for p in (directory, *directory.parents) if p != base and p.is_relative_to(base)]


def _full_disk(error: BaseException, directory: Path) -> bool:
    """A full disk (or quota), however the writer reported it: an OSError, safetensors' own error (its text names
    os error 28), or torch.save's RuntimeError ("unexpected pos ...") on a nearly full disk."""
    if is_no_space(error):
        return True
    text = str(error)
    if "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text:
        return True
    return isinstance(error, RuntimeError) and _free_bytes(directory) is not None and _free_bytes(directory) < 64 << 20


def _free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(nearest_existing(directory)).free
    except OSError:
        return None


def _size(n: int) -> str:
    """Bytes for people: 512 bytes, 20.0 KiB, 1.5 GiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _no_space_error(checkpoint_dir: Path, out_dir: Path, flag: str, model, existed: bool) -> str:
    free = _free_bytes(out_dir.parent)
    needs = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    has = f"has {_size(free)} free" if free is not None else "has too little free space"
    kept = f"{out_dir} was left as it was" if existed else f"{out_dir} was not written"
    return (f"no space left on device writing the export of {checkpoint_dir}: {kept} (the partial export was "
            f"removed); {nearest_existing(out_dir.parent)} {has} and the weights alone take {_size(needs)}: free "
            f"space, or choose another {flag}, and export again")


def _skeleton_of(checkpoint_dir: Path, skeleton_dir: str | Path | None) -> Path:
    """The run's student_config (given, or next to the checkpoint), checked: ExportError naming the fix."""
    if skeleton_dir is None:
        skeleton = checkpoint_dir.parent.parent / "student_config"
        if not (skeleton / "config.json").is_file():
            raise ExportError(f"{skeleton} has no config.json: give the run's output directory (it holds "
                              "student_config/), or pass its student_config with --student_config")
        return skeleton
    skeleton = Path(skeleton_dir)
    if not skeleton.exists():
        raise ExportError(f"--student_config {skeleton_dir}: no such directory")
    if not (skeleton / "config.json").is_file():
        raise ExportError(f"--student_config {skeleton_dir} has no config.json: give the run's "
                          "OUTPUT_DIR/student_config (or leave --student_config out: the one next to the "
                          "checkpoint is taken)")
    return skeleton


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, skeleton_dir: str | Path | None = None,
                      flag: str = "--export_dir", export_format: str = "auto",
                      projection: torch.Tensor | None = None, embedding_projection: str = "export") -> Path:
    """Write `out_dir` (atomically) with the student of `checkpoint_dir`: loadable by AutoModel/AutoTokenizer.

    `export_format`: "auto" (a sentence-transformers model too when the run kept the teacher's modules in
    `student_config`), "hf" (the encoder only) or "sentence-transformers" (those modules, else mean pooling; needs
    sentence-transformers installed). `projection`: an optional [out, in] weight written as a Dense module after the
    Pooling (see `st_io.student_files`). A note is printed for each teacher module left out.
    `embedding_projection`: what becomes of a projection the checkpoint holds (the embedding loss's, weights
    `distill_embedding_projection.*`): "export" writes it as that Dense module (in a sentence-transformers
    export; a plain one has no place for it and leaves it out, with a note), "drop" leaves it out.

    ExportError before any work when `out_dir` holds anything but an earlier export, or lies in the run's
    checkpoints or own files (see `check_export_target`; `flag` names it in messages); and on a full disk
    (`out_dir` then left as it was, the message naming the free space).
    """
    from transformers import AutoConfig, AutoModel

    from .encoders import get_adapter

    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if not ckpt.is_complete(checkpoint_dir):
        raise ExportError(f"{checkpoint_dir} is not a complete checkpoint (no {ckpt.COMPLETE} marker); "
                          "export an earlier one")
    ckpt.verify_checkpoint(checkpoint_dir)  # a damaged marker or a truncated file: named, with the previous one
    run = checkpoint_dir.parent.parent if checkpoint_dir.parent.name == "checkpoints" else None
    check_export_target(out_dir, flag, run)
    skeleton = _skeleton_of(checkpoint_dir, skeleton_dir)
    config = AutoConfig.from_pretrained(skeleton)
    modules = st_io.modules_for_export(skeleton, export_format, get_adapter(config).hidden_size(config),
                                       "--export_format")
    model = AutoModel.from_config(config)
    state = checkpoint_state_dict(checkpoint_dir)
    held = state.pop(f"{PROJECTION_ATTRIBUTE}.weight", None)
    if held is not None and projection is None and embedding_projection == "export":
        projection = held if modules is not None else None
        if modules is None:
            print("note: the embedding loss's projection is left out: a plain Hugging Face export has no module "
                  "for it (use --export_format sentence-transformers to keep it as a Dense module)", flush=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ExportError(f"{checkpoint_dir} does not match the student config in {skeleton}: "
                          f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    existed = out_dir.exists()
    try:
        notes = _write_export(model, skeleton, checkpoint_dir, out_dir, flag, modules, projection, run)
    except Exception as e:
        if not _full_disk(e, out_dir.parent):
            raise
        raise ExportError(_no_space_error(checkpoint_dir, out_dir, flag, model, existed)) from e
    for note in notes:
        print(f"note: {note}", flush=True)
    return out_dir


CLI_DESCRIPTION = """Export a distillation checkpoint as a Hugging Face model directory.

    %(prog)s runs/minilm/checkpoints/step-00010000 --output_dir my-student
    %(prog)s runs/minilm --output_dir my-student      # the newest complete checkpoint

Works for every ZeRO stage (the fp32 weights are rebuilt from the checkpoint files) on CPU.
The result loads with AutoModel.from_pretrained and AutoTokenizer.from_pretrained; when the
teacher was a sentence-transformers model (or with --export_format sentence-transformers) it is
one too, and loads with SentenceTransformer(DIR).

--output_dir must be missing, an empty directory, or an earlier export (which is replaced): a directory
holding anything else, or a file, is refused and left as it is; so is a place inside the run's
checkpoints (rotation deletes them). The export is written beside
--output_dir and moved in when complete; it lists its files in --output_dir/""" + EXPORT_MARKER + """.
Every flag is a field of ExportConfig, spelled --flag_name or --flag-name."""


def resolve_source(path: Path) -> Path:
    """The checkpoint to export: `path` itself, or a run directory's newest complete checkpoint."""
    if not path.exists():
        raise ExportError(f"{path}: no such checkpoint or run directory")
    if (path / "checkpoints").is_dir():
        newest = ckpt.newest_checkpoint(path)  # verified: a damaged one is named, with the previous one
        if newest is not None:
            return newest
        unfinished = [p.name for p in ckpt.list_checkpoints(path, complete_only=False)]
        found = (f"{', '.join(unfinished)} {'is' if len(unfinished) == 1 else 'are'} unfinished (no "
                 f"{ckpt.COMPLETE} marker: the run died while writing)" if unfinished else "it holds none")
        raise ExportError(f"{path} has no complete checkpoint in {path / 'checkpoints'} ({found}); "
                          "resume the run to save one, or export another run")
    if path.is_dir() and (path.parent.name == "checkpoints" or ckpt.is_complete(path)
                          or any(path.glob("*model_states.pt"))):
        return path
    raise ExportError(f"{path} is neither a checkpoint directory (OUTPUT_DIR/checkpoints/step-N) nor a run "
                      "directory (an OUTPUT_DIR holding checkpoints/); give one of those")


@dataclass
class ExportConfig:
    """What `distill-export` exports, and where to (`export_checkpoint`'s settings)."""

    checkpoint: str = option("a checkpoint directory (OUTPUT_DIR/checkpoints/step-N) or a run's OUTPUT_DIR",
                             positional=True)
    output_dir: str = option("the Hugging Face model directory to write: missing, empty, or an earlier export",
                             metavar="DIR", deprecated=("out",))
    student_config: str | None = option("the run's OUTPUT_DIR/student_config (found next to the checkpoint by "
                                        "default)", default=None)
    export_format: str = option("auto: a sentence-transformers model too when the teacher was one; hf: the encoder "
                                "only; sentence-transformers: also for a plain teacher (mean pooling); default: auto",
                                default="auto", choices=st_io.EXPORT_FORMATS)
    embedding_projection: str = option("a run with --embedding_loss and a student narrower than the teacher trained "
                                       "a projection to the teacher's width: export it as a Dense module after the "
                                       "pooling, or drop it; default: export", default="export",
                                       choices=("export", "drop"))


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's parser, generated from ExportConfig."""
    p = argparse.ArgumentParser(prog=prog or os.path.basename(sys.argv[0]), description=CLI_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_arguments(p, ExportConfig)


def main(argv: list[str] | None = None) -> int:
    """`distill-export CHECKPOINT_OR_RUN_DIR --output_dir DIR`; 0 done, 2 bad input (`error: ...` on stderr)."""
    args = ExportConfig(**vars(parser().parse_args(argv)))
    try:
        path = resolve_source(Path(args.checkpoint))
        out = export_checkpoint(path, args.output_dir, skeleton_dir=args.student_config, flag="--output_dir",
                                export_format=args.export_format, embedding_projection=args.embedding_projection)
    except DistillError as e:  # a bug is not caught: its traceback, exit 1
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"exported {path} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
