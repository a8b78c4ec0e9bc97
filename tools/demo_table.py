"""The demo's last step: teacher vs distilled student vs a random student of the same shape, on `reviews`.

    python tools/demo_table.py --student demo/student [--teacher assets/teacher] [--output_dir demo/eval]

Fine-tunes the three models the same way and prints the Markdown table (also saved to
OUTPUT_DIR/table.md). See distill.evaluation.demo (`--help` for the flags).
"""
import sys

from distill.evaluation.demo import main

if __name__ == "__main__":
    sys.exit(main())
