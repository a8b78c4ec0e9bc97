"""Export a distillation checkpoint as a Hugging Face model directory.

    python tools/export_student.py runs/minilm/checkpoints/step-00010000 --out my-student
    python tools/export_student.py runs/minilm --out my-student      # the newest complete checkpoint

Works for every ZeRO stage (the fp32 weights are rebuilt from the checkpoint files) on CPU.
The result loads with AutoModel.from_pretrained and AutoTokenizer.from_pretrained.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from distill import checkpoint as ckpt  # noqa: E402
from distill.export import export_checkpoint  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint directory (OUTPUT_DIR/checkpoints/step-N) or a run's OUTPUT_DIR")
    p.add_argument("--out", required=True, help="the Hugging Face model directory to write")
    p.add_argument("--student_config", help="the run's OUTPUT_DIR/student_config (found next to the checkpoint by default)")
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
