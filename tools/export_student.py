"""Export a distillation checkpoint as a Hugging Face model directory (the same command as `distill-export`).

    python tools/export_student.py runs/minilm/checkpoints/step-00010000 --out my-student
    python tools/export_student.py runs/minilm --out my-student      # the newest complete checkpoint
    python tools/export_student.py runs/minilm --out my-student --export_format hf   # the encoder alone

See distill.export.main.
"""
import sys

from distill.export import main

if __name__ == "__main__":
    sys.exit(main())
