"""Export a distillation checkpoint as a Hugging Face model directory (the same command as `distill-export`).

    python tools/export_student.py runs/minilm/checkpoints/step-00010000 --output_dir my-student
    python tools/export_student.py runs/minilm --output_dir my-student      # the newest complete checkpoint
    python tools/export_student.py runs/minilm --output_dir my-student --export_format hf   # the encoder alone

See distill.export.main (the flags: ExportConfig; `--out` is the former name of `--output_dir`).
"""
import sys

from distill.export import main

if __name__ == "__main__":
    sys.exit(main())
