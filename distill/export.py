"""Checkpoint -> a Hugging Face model directory (weights, config, tokenizer).

Works for ZeRO stages 0-3: the fp32 weights are rebuilt from the checkpoint's files with
DeepSpeed's own `get_fp32_state_dict_from_zero_checkpoint`, so no GPU and no process group
are needed. The student's config and tokenizer come from `OUTPUT_DIR/student_config`,
written at the start of the run. `main` is the command (`distill-export`, tools/export_student.py).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from . import checkpoint as ckpt


def save_student_skeleton(student, tokenizer_source, directory: str | Path) -> None:
    """The student's config.json and the tokenizer, what export needs besides the weights."""
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    directory = Path(directory)
    tmp = Path(tempfile.mkdtemp(prefix=".student_config.", dir=directory.parent))
    student.config.save_pretrained(tmp)
    tok = tokenizer_source if isinstance(tokenizer_source, PreTrainedTokenizerBase) \
        else AutoTokenizer.from_pretrained(tokenizer_source)
    tok.save_pretrained(tmp)
    _replace_dir(tmp, directory)


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished directory into place; the old one is removed only after the new one is complete."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, skeleton_dir: str | Path | None = None) -> Path:
    """Write `out_dir` (atomically) with the student of `checkpoint_dir`: loadable by AutoModel/AutoTokenizer."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if not ckpt.is_complete(checkpoint_dir):
        raise ValueError(f"{checkpoint_dir} is not a complete checkpoint (no {ckpt.COMPLETE} marker); "
                         "export an earlier one")
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
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(skeleton).save_pretrained(tmp)
    _replace_dir(tmp, out_dir)
    return out_dir


CLI_DESCRIPTION = """Export a distillation checkpoint as a Hugging Face model directory.

    %(prog)s runs/minilm/checkpoints/step-00010000 --out my-student
    %(prog)s runs/minilm --out my-student      # the newest complete checkpoint

Works for every ZeRO stage (the fp32 weights are rebuilt from the checkpoint files) on CPU.
The result loads with AutoModel.from_pretrained and AutoTokenizer.from_pretrained."""


def main(argv: list[str] | None = None) -> int:
    """`distill-export CHECKPOINT_OR_RUN_DIR --out DIR`; 0 done, 2 bad input (`error: ...` on stderr)."""
    p = argparse.ArgumentParser(description=CLI_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint directory (OUTPUT_DIR/checkpoints/step-N) or a run's OUTPUT_DIR")
    p.add_argument("--out", required=True, help="the Hugging Face model directory to write")
    p.add_argument("--student_config",
                   help="the run's OUTPUT_DIR/student_config (found next to the checkpoint by default)")
    args = p.parse_args(argv)
    path = Path(args.checkpoint)
    if (path / "checkpoints").is_dir():
        done = ckpt.list_checkpoints(path)
        if not done:
            print(f"error: {path} has no complete checkpoint", file=sys.stderr)
            return 2
        path = done[-1]
    try:
        out = export_checkpoint(path, args.out, skeleton_dir=args.student_config)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {path} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
