"""Fine-tune a model on GLUE / reviews / your own task over a grid, then print the summary table.

    python launch/evaluate_glue.py MODEL_DIR --tasks sst2 mrpc --learning_rate 1e-5 3e-5 \
        --epochs 3 5 --seeds 42 43 --output_dir results
    python launch/evaluate_glue.py summary results --aggregation best

Exit status: 0 done; 1 some runs failed (the others finished); 2 bad input (nothing trained).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from distill.evaluation.tasks import DEFAULT_TASKS, TASKS, TaskDataError  # noqa: E402


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate_glue.py", description="Fine-tune MODEL over a grid of "
                                "learning rates, epochs and seeds on each task; `evaluate_glue.py summary -h` "
                                "for the table alone.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model_name_or_path", help="model directory (with its tokenizer) or hub name")
    p.add_argument("--tasks", nargs="+", default=None,
                   help=f"among {', '.join(TASKS)}; default {' '.join(DEFAULT_TASKS)} (only the custom task "
                        f"when --train_file is given)")
    p.add_argument("--learning_rate", nargs="+", type=float, default=[1e-5, 3e-5, 5e-5], help="grid: peak AdamW "
                   "learning rates (linear warmup and decay)")
    p.add_argument("--epochs", nargs="+", type=float, default=[3, 5, 10], help="grid: training epochs")
    p.add_argument("--seeds", nargs="+", type=int, default=[42], help="grid: seeds (head init, dropout, order)")
    p.add_argument("--output_dir", default="./evaluation_results", help="results root; runs go to "
                   "OUTPUT_DIR/MODEL_NAME/TASK/lr<lr>_ep<epochs>_seed<seed>/")
    p.add_argument("--model_name", default=None, help="row name in the table; default the model dir's name")
    p.add_argument("--tokenizer_name", default=None, help="tokenizer dir or hub name, if not the model's")
    p.add_argument("--data_dir", default=None, help="GLUE data in the original TSV layout or a save_to_disk "
                   "dir; the reviews parquet (or its folder); default the hub / the offline assets")
    p.add_argument("--per_device_train_batch_size", type=int, default=32, help="training batch (one device per run)")
    p.add_argument("--per_device_eval_batch_size", type=int, default=64, help="evaluation batch")
    p.add_argument("--max_seq_length", type=int, default=128, help="truncate inputs to this many tokens")
    p.add_argument("--warmup_ratio", type=float, default=0.1, help="share of the steps spent warming up")
    p.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--max_train_samples", type=int, default=None, help="train on a fixed random subset")
    p.add_argument("--max_eval_samples", type=int, default=None, help="evaluate on a fixed random subset")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="bf16 / fp16 mixed precision need a CUDA GPU")
    p.add_argument("--cache_dir", default=None, help="Hugging Face cache for hub models and datasets")
    p.add_argument("--devices", nargs="+", default=None,
                   help="run in worker processes, one run per device at a time: GPU indices or 'cpu'; "
                        "default all GPUs when several are visible, else in this process")
    p.add_argument("--overwrite", action="store_true", help="redo every run, finished or not")
    p.add_argument("--redo_changed", action="store_true", help="redo finished runs made with other settings or "
                   "another model (by default those are refused before training)")
    p.add_argument("--group_by_length", action="store_true", help="batch examples of similar length together "
                   "(less padding: faster on CPU)")
    p.add_argument("--aggregation", choices=["best", "mean", "median"], default="best",
                   help="for the table printed at the end")
    g = p.add_argument_group("custom task (your own files)")
    g.add_argument("--task_name", default="custom", help="its name in the results and the table")
    g.add_argument("--train_file", default=None, help="CSV, TSV, JSON / JSON lines or parquet")
    g.add_argument("--validation_file", default=None, help="the dev split, same format")
    g.add_argument("--text_fields", nargs="+", default=["text"], help="one column, or two for pairs")
    g.add_argument("--label_field", default="label", help="the label column")
    g.add_argument("--metrics", nargs="+", default=["accuracy"],
                   help="accuracy f1 f1_macro mcc (classification), pearson spearman (regression)")
    g.add_argument("--labels", nargs="+", default=None, help="class names in id order; default: the train "
                   "labels, sorted")
    return p


def summary_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate_glue.py summary", description="Print the summary table of a "
                                "results dir as Markdown and save it as CSV.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("results_dir")
    p.add_argument("--aggregation", choices=["best", "mean", "median"], default="best",
                   help="over each task's runs: the best run (default), or the mean / median")
    p.add_argument("--metrics", choices=["main", "all"], default="main",
                   help="main: one score per task; all: a column per metric")
    p.add_argument("--models", nargs="+", default=None, help="rows, in this order; default all, sorted")
    p.add_argument("--tasks", nargs="+", default=None, help="columns, in this order; default all")
    p.add_argument("--output", default=None, help="CSV path; default RESULTS_DIR/summary.csv")
    p.add_argument("--hyperparameters", action="store_true", help="also print the chosen runs' hyper-parameters")
    return p


def summary(args) -> None:
    from distill.evaluation.summary import create_summary_table, markdown_table

    table = create_summary_table(args.results_dir, output_file=args.output, aggregation=args.aggregation,
                                 metrics=args.metrics, models=args.models, tasks=args.tasks)
    print(markdown_table(table))
    if args.hyperparameters:
        print()
        print(markdown_table(table.attrs["hyperparameters"]))
    print(f"\n({args.aggregation} over each task's runs; saved to "
          f"{args.output or Path(args.results_dir) / 'summary.csv'})")


def run(args) -> int:
    from transformers.utils import logging as hf_logging

    from distill.evaluation import custom_task, evaluate

    import datasets

    hf_logging.set_verbosity_error()  # the new classifier head's "newly initialized" notice, every run
    hf_logging.disable_progress_bar()  # weight-loading bars; the Trainer keeps its own
    datasets.disable_progress_bars()  # tokenization bars
    tasks = list(args.tasks or ([] if args.train_file else DEFAULT_TASKS))
    if args.train_file or args.validation_file:
        tasks.append(custom_task(args.task_name, args.train_file, args.validation_file, args.text_fields,
                                 args.label_field, args.metrics, args.labels))
    if args.devices and not all(d == "cpu" or d.isdigit() for d in args.devices):
        raise TaskDataError(f"--devices {' '.join(args.devices)}: give GPU indices (0 1 ...) or 'cpu'")
    devices = [d if d == "cpu" else int(d) for d in args.devices] if args.devices else None
    records = evaluate(args.model_name_or_path, tasks=tasks, learning_rate=args.learning_rate, epochs=args.epochs,
                       seeds=args.seeds, output_dir=args.output_dir, model_name=args.model_name,
                       tokenizer_name=args.tokenizer_name, data_dir=args.data_dir,
                       per_device_train_batch_size=args.per_device_train_batch_size,
                       per_device_eval_batch_size=args.per_device_eval_batch_size,
                       max_seq_length=args.max_seq_length, warmup_ratio=args.warmup_ratio,
                       weight_decay=args.weight_decay, max_train_samples=args.max_train_samples,
                       max_eval_samples=args.max_eval_samples, precision=args.precision, cache_dir=args.cache_dir,
                       group_by_length=args.group_by_length, devices=devices,
                       overwrite=True if args.overwrite else "changed" if args.redo_changed else False)
    if any(r["status"] != "failed" for r in records):
        summary(argparse.Namespace(results_dir=args.output_dir, aggregation=args.aggregation, metrics="main",
                                   models=None, tasks=None, output=None, hyperparameters=True))
    return 1 if any(r["status"] == "failed" for r in records) else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["summary"]:
            summary(summary_parser().parse_args(argv[1:]))
            return 0
        return run(run_parser().parse_args(argv[1:] if argv[:1] == ["run"] else argv))
    except (TaskDataError, FileNotFoundError) as e:  # bad input: nothing was trained
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
