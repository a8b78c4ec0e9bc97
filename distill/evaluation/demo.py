"""The demo's last step: teacher vs distilled student vs a random student of the same shape, on `reviews`.

    python tools/demo_table.py --student demo/student [--teacher assets/teacher] [--output_dir demo/eval]

Builds the random student (AutoConfig.from_pretrained(STUDENT) + AutoModel.from_config, seeded,
saved with the student's tokenizer), fine-tunes the three models the same way on the reviews task
(the same grid, data subset and settings, through distill.evaluation.evaluate), and prints the
Markdown table (also saved to OUTPUT_DIR/table.md and OUTPUT_DIR/results/summary.csv).
The defaults (2000 training reviews, 1000 dev reviews, 128 tokens, batches of 16 grouped by length,
1 epoch, learning rate 2e-4, seed 42) take about 5 minutes on 2 CPU cores; raise them with the flags.
A re-run reuses finished runs and redoes those of a model that changed (e.g. a new student).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from .grid import REPO_ROOT
from .summary import AGGREGATIONS
from .tasks import TaskDataError

__all__ = ["main", "parse_args", "build_random_student", "shape", "ROWS"]

ROWS = ("teacher", "distilled", "random")  # results folders / table rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", required=True, help="the distilled student's model directory (with tokenizer)")
    p.add_argument("--teacher", default=str(REPO_ROOT / "assets" / "teacher"), help="the teacher's model directory")
    p.add_argument("--reviews", default=None, help="reviews.parquet (or its folder); default the offline assets")
    p.add_argument("--output_dir", default="demo/eval", help="random student, results, table")
    p.add_argument("--max_train_samples", type=int, default=2000, help="training reviews (0: all 17837)")
    p.add_argument("--max_eval_samples", type=int, default=1000, help="dev reviews (0: all 1981)")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--epochs", nargs="+", type=float, default=[1])
    p.add_argument("--learning_rate", nargs="+", type=float, default=[2e-4])
    p.add_argument("--seeds", nargs="+", type=int, default=[42])
    p.add_argument("--per_device_train_batch_size", type=int, default=16)
    p.add_argument("--group_by_length", action=argparse.BooleanOptionalAction, default=True,
                   help="batch reviews of similar length together (less padding; on by default)")
    p.add_argument("--aggregation", choices=list(AGGREGATIONS), default="best")
    p.add_argument("--random_init_seed", type=int, default=0, help="seed of the random student's weights")
    p.add_argument("--devices", nargs="+", default=None, help="as evaluate_glue.py --devices")
    return p.parse_args(argv)


def build_random_student(student_dir: str, out_dir: Path, seed: int) -> Path:
    """A model of the student's config with the architecture's own random initialisation, and its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModel

    from .finetune import load_tokenizer

    config = AutoConfig.from_pretrained(student_dir)
    if (out_dir / "config.json").is_file() and _shape_of(AutoConfig.from_pretrained(out_dir)) == _shape_of(config):
        return out_dir  # built before for a student of this shape (same seed: the same weights)
    tokenizer = load_tokenizer(student_dir)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def _shape_of(config) -> dict:
    ignore = {"_name_or_path", "architectures", "transformers_version", "torch_dtype", "dtype"}
    return {k: v for k, v in config.to_dict().items() if k not in ignore}


def shape(model_dir) -> dict:
    """layers, hidden, parameters (millions) from the config, without loading weights."""
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModel.from_config(config).parameters())
    return {"layers": config.num_hidden_layers, "hidden": config.hidden_size, "params (M)": round(n / 1e6, 1)}


def fine_tune_all(args: argparse.Namespace, models: dict[str, str], results: Path) -> dict[str, float]:
    """Each model's reviews grid (finished runs reused); {row: the runs' own training seconds}."""
    from .grid import evaluate

    timings = {}
    for name, path in models.items():
        records = evaluate(path, tasks=["reviews"], learning_rate=args.learning_rate, epochs=args.epochs,
                           seeds=args.seeds, output_dir=results, model_name=name, data_dir=args.reviews,
                           per_device_train_batch_size=args.per_device_train_batch_size,
                           max_seq_length=args.max_seq_length, max_train_samples=args.max_train_samples or None,
                           max_eval_samples=args.max_eval_samples or None, disable_tqdm=True,
                           group_by_length=args.group_by_length, overwrite="changed", devices=args.devices)
        if any(r["status"] == "failed" for r in records):
            raise RuntimeError(f"{name}: a fine-tuning run failed; see error.txt under {results / name}")
        timings[name] = sum(json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["train"]["runtime_s"]
                            for r in records)  # finished earlier or now: the runs' own time
    return timings


def comparison_table(args: argparse.Namespace, models: dict[str, str], results: Path,
                     timings: dict[str, float]) -> tuple[str, str]:
    """(the Markdown table: shape, every metric, score, fine-tuning time per row; the note on the settings)."""
    import pandas as pd

    from .summary import create_summary_table, markdown_table, summarize

    create_summary_table(results, aggregation=args.aggregation, models=list(ROWS), tasks=["reviews"])
    every = summarize(results, aggregation=args.aggregation, metrics="all", models=list(ROWS), tasks=["reviews"])
    table = pd.DataFrame([shape(models[m]) for m in ROWS], index=list(ROWS))
    table = table.join(every.scores.drop(columns="avg").rename(columns=lambda c: c.split("/", 1)[1]))
    table["score"] = every.scores["avg"]  # the task score: (accuracy + macro F1) / 2
    table["fine-tune (s)"] = [round(timings[m]) for m in ROWS]
    table.index.name = "model"
    hp = every.hyperparameters["reviews"]
    note = (f"reviews: {args.max_train_samples or 'all'} train / {args.max_eval_samples or 'all'} dev examples, "
            f"max_seq_length {args.max_seq_length}, batch {args.per_device_train_batch_size}, "
            f"epochs {args.epochs}, learning rate {args.learning_rate}, "
            f"seeds {args.seeds} ({args.aggregation}; chosen: {', '.join(f'{m} {hp[m]}' for m in ROWS)}); "
            f"scores x100 on the dev subset")
    return markdown_table(table, digits=2), note


def main(argv: list[str] | None = None) -> int:
    """The demo table; 0 done, 2 bad input or a failed run (`error: ...` on stderr)."""
    from transformers.utils import logging as hf_logging

    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    out = Path(args.output_dir)
    results = out / "results"
    t0 = time.time()
    try:
        for d in (args.teacher, args.student):
            if not (Path(d) / "config.json").is_file():
                raise TaskDataError(f"{d} is not a model directory (no config.json)")
        random_dir = build_random_student(args.student, out / "random-student", args.random_init_seed)
        models = dict(zip(ROWS, (args.teacher, args.student, str(random_dir)), strict=True))
        timings = fine_tune_all(args, models, results)
    except (TaskDataError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text, note = comparison_table(args, models, results, timings)
    note += f"; total {time.time() - t0:.0f} s"
    (out / "table.md").write_text(text + "\n\n" + note + "\n")
    print(text)
    print()
    print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
