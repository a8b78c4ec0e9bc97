"""The demo's last step: what distillation itself adds, on `reviews`.

    python tools/demo_table.py --student demo/student [--teacher assets/teacher] [--output_dir demo/eval]

Four rows: the teacher; the distilled student; the *sliced* student, the same shape built from the
teacher exactly as the distillation started (`create_student`: its embeddings and evenly spaced
layers, leading rows and columns) but never distilled; and a random student of that shape (the
architecture's own initialisation, seeded). Each is fine-tuned the same way on the reviews task
(the same grid, data subset and settings, through distill.evaluation.evaluate), and scored from
frozen embeddings without fine-tuning (distill.evaluation.evaluate_embeddings: MTEB's scores of the
pooled embeddings, its logistic-regression probe accuracy and its clustering V-measure; a
sentence-transformers model uses its own pooling, the sliced student is one too when the teacher
is). It needs the mteb package (distill[embeddings]). The Markdown table is printed and
saved to OUTPUT_DIR/table.md and OUTPUT_DIR/results/summary.csv.
The defaults (2000 training reviews, 1000 dev reviews, 128 tokens, batches of 16 grouped by length,
1 epoch, learning rate 2e-4, seed 42; the embedding probe 32 reviews per class x 10 draws) take
about 7 minutes on 2 CPU cores; raise them with the flags. A re-run reuses finished runs and cached
embeddings and redoes those of a model that changed (e.g. a new student). Every input (the two model
directories, the reviews table, the folders written, every setting of both evaluations) is checked
before any model is built, loaded or trained (`check_inputs`): a problem is one `error: ...` line, exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..cli_args import add_arguments, option
from ..errors import DistillError
from ..io import atomic_write_bytes
from ..paths import assets_dir, assets_problem, is_no_space, no_space_message, output_dir_problem
from .finetune import check_model, load_tokenizer, model_dir_problem
from .summary import AGGREGATIONS
from .tasks import TaskDataError

__all__ = ["main", "DemoConfig", "parser", "parse_args", "check_inputs", "build_random_student", "build_sliced_student",
           "shape", "ROWS"]

ROWS = ("teacher", "distilled", "sliced", "random")  # results folders / table rows
EMBEDDING_COLUMNS = {"cls-acc": "emb cls-acc", "cls-f1": "emb cls-f1", "cluster-v": "emb cluster-v"}


@dataclass
class DemoConfig:
    """The demo table's settings: the two models, the reviews, and both evaluations' settings (the same for every
    row)."""

    student: str = option("the distilled student's model directory (with tokenizer)")
    teacher: str | None = option("the teacher's model directory (default: the offline assets' teacher, "
                                 "$DISTILL_ASSETS/teacher or the checkout's assets/teacher)", default=None)
    reviews: str | None = option("reviews.parquet (or its folder); default the offline assets", default=None)
    output_dir: str = option("random student, results, table", default="demo/eval")
    max_train_samples: int = option("training reviews (0: all 17837)", default=2000)
    max_eval_samples: int = option("dev reviews (0: all 1981)", default=1000)
    max_seq_length: int = option("reviews are truncated to this many tokens", default=128)
    epochs: list[float] = option("grid: training epochs", default_factory=lambda: [1])
    learning_rate: list[float] = option("grid: peak learning rates", default_factory=lambda: [2e-4])
    seeds: list[int] = option("grid: seeds", default_factory=lambda: [42])
    per_device_train_batch_size: int = option("training batch", default=16)
    group_by_length: bool = option("batch reviews of similar length together (less padding)", default=True)
    aggregation: str = option("over each model's runs, for the table", default="best", choices=AGGREGATIONS)
    random_init_seed: int = option("seed of the random student's weights", default=0)
    samples_per_label: int = option("the embedding probe's train reviews per class in each of 10 draws (0: one "
                                    "probe on every train review)", default=32)
    devices: list[str] | None = option("as evaluate_glue.py --devices", default=None)


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's parser, generated from DemoConfig (both spellings of every flag)."""
    p = argparse.ArgumentParser(prog=prog or os.path.basename(sys.argv[0]), description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return add_arguments(p, DemoConfig)


def parse_args(argv: list[str] | None = None) -> DemoConfig:
    config = DemoConfig(**vars(parser().parse_args(argv)))
    if config.teacher is None:
        config.teacher = str(assets_dir() / "teacher")
    return config


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


def build_sliced_student(teacher_dir: str, student_dir: str, out_dir: Path) -> Path:
    """The student's shape built from the teacher as a distillation starts (`create_student`, init teacher) and
    saved with the teacher's tokenizer; a sentence-transformers model too when the teacher is one."""
    from transformers import AutoConfig

    from ..encoders import get_adapter
    from ..paths import apply_umask
    from ..sentence_transformers_io import max_seq_length, read_teacher_modules, student_files
    from ..student import create_student
    from .finetune import load_tokenizer

    config = AutoConfig.from_pretrained(student_dir)
    adapter = get_adapter(config)
    student = create_student(teacher_dir, adapter.num_layers(config), adapter.hidden_size(config),
                             adapter.num_attention_heads(config), adapter.intermediate_size(config))
    tokenizer = load_tokenizer(teacher_dir)
    teacher_config = AutoConfig.from_pretrained(teacher_dir)
    modules = read_teacher_modules(teacher_dir, "auto", adapter.hidden_size(teacher_config))
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if modules is not None:
        files, _ = student_files(modules, adapter.hidden_size(config), max_seq_length(student.config, tokenizer))
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
    apply_umask(tmp)
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


def grid_settings(args: DemoConfig, results: Path) -> dict:
    """The fine-tuning grid's settings, the same for every row (`evaluate`'s keyword arguments)."""
    return dict(tasks=["reviews"], learning_rate=args.learning_rate, epochs=args.epochs, seeds=args.seeds,
                output_dir=results, data_dir=args.reviews, per_device_train_batch_size=args.per_device_train_batch_size,
                max_seq_length=args.max_seq_length, max_train_samples=_all(args.max_train_samples),
                max_eval_samples=_all(args.max_eval_samples), disable_tqdm=True, group_by_length=args.group_by_length,
                overwrite="changed", devices=args.devices)


def embedding_settings(args: DemoConfig) -> dict:
    """The frozen-embedding evaluation's settings (`evaluate_embeddings`' keyword arguments past the models)."""
    return dict(data_dir=args.reviews, max_seq_length=args.max_seq_length,
                max_train_samples=_all(args.max_train_samples), max_eval_samples=_all(args.max_eval_samples),
                samples_per_label=args.samples_per_label, progress_bar=False)


def _all(cap: int):
    """0 means all (None); anything else is passed on, and checked there (a negative cap is refused)."""
    return None if cap == 0 else cap


def fine_tune_all(args: DemoConfig, models: dict[str, str], results: Path) -> dict[str, float]:
    """Each model's reviews grid (finished runs reused); {row: the runs' own training seconds}."""
    from .grid import evaluate

    timings = {}
    for name, path in models.items():
        records = evaluate(path, model_name=name, **grid_settings(args, results))
        if any(r["status"] == "failed" for r in records):
            raise DistillError(f"{name}: a fine-tuning run failed; see error.txt under {results / name}")
        timings[name] = sum(json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["train"]["runtime_s"]
                            for r in records)  # finished earlier or now: the runs' own time
    return timings


def embed_all(args: DemoConfig, models: dict[str, str], results: Path) -> float:
    """Each model's frozen-embedding scores on reviews (cached embeddings reused); the seconds it took."""
    from .embedding_eval import evaluate_embeddings

    start = time.perf_counter()
    evaluate_embeddings(list(models.values()), ["reviews"], results, model_names=list(models),
                        log=lambda line: None, **embedding_settings(args))
    return time.perf_counter() - start


def comparison_table(args: DemoConfig, models: dict[str, str], results: Path,
                     timings: dict[str, float]) -> tuple[str, str]:
    """(the Markdown table: shape, every metric, score, fine-tuning time per row; the note on the settings)."""
    import pandas as pd

    from .summary import create_summary_table, markdown_table, summarize

    create_summary_table(results, aggregation=args.aggregation, models=list(ROWS), tasks=["reviews"])
    every = summarize(results, aggregation=args.aggregation, metrics="all", models=list(ROWS), tasks=["reviews"])
    table = pd.DataFrame([shape(models[m]) for m in ROWS], index=list(ROWS))
    scores = every.scores.drop(columns="avg").rename(columns=lambda c: c.split("/", 1)[1])
    embedding = [c for c in scores.columns if c in EMBEDDING_COLUMNS]
    table = table.join(scores.drop(columns=embedding))
    table["score"] = every.scores["avg"]  # the task score: (accuracy + macro F1) / 2
    table["fine-tune (s)"] = [round(timings[m]) for m in ROWS]
    table = table.join(scores[embedding].rename(columns=EMBEDDING_COLUMNS))
    table.index.name = "model"
    hp = every.hyperparameters["reviews"]
    note = (f"reviews: {args.max_train_samples or 'all'} train / {args.max_eval_samples or 'all'} dev examples, "
            f"max_seq_length {args.max_seq_length}, batch {args.per_device_train_batch_size}, "
            f"epochs {args.epochs}, learning rate {args.learning_rate}, "
            f"seeds {args.seeds} ({args.aggregation}; chosen: {', '.join(f'{m} {hp[m]}' for m in ROWS)}); "
            f"scores x100 on the dev subset; emb: frozen embeddings without fine-tuning, scored by MTEB "
            f"(logistic regression on {args.samples_per_label or 'all'} train reviews per class"
            f"{' x 10 draws' if args.samples_per_label else ''}, clustering V-measure), {timings['embed']:.0f} s "
            f"for the four models")
    return markdown_table(table, digits=2), note


def check_inputs(args: DemoConfig, models: dict[str, str], out: Path) -> None:
    """Every input, before any model is built, loaded or trained (TaskDataError naming the problem and the fix):
    the folders written, the two model directories (config, tokenizer, positions, one architecture), the reviews
    table, and every setting of both evaluations, checked by the configs they are run with."""
    from .config import EvaluationConfig
    from .embedding_eval import EmbeddingEvaluationConfig
    from .grid import _check_devices
    from .tasks import _reviews_path

    for folder in (out, out / "results", out / "sliced-student", out / "random-student"):
        problem = output_dir_problem(folder, "--output_dir" if folder == out else "the demo's folder")
        if problem is None and folder.is_dir() and not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
            problem = (f"{folder} cannot be read or written (permission denied): change its permissions or choose "
                       "another --output_dir")
        if problem:
            raise TaskDataError(problem)
    configs = {}
    if args.teacher == str(assets_dir() / "teacher") and assets_problem("the offline teacher", Path(args.teacher)):
        raise TaskDataError(f"--teacher: {assets_problem('the offline teacher', Path(args.teacher))}")
    for flag, path in (("--teacher", args.teacher), ("--student", args.student)):
        problem = model_dir_problem(path, flag)
        if problem:
            raise TaskDataError(problem)
        configs[flag] = check_model(path, load_tokenizer(path), args.max_seq_length)
    teacher, student = (configs[f].model_type for f in ("--teacher", "--student"))
    if teacher != student:
        raise TaskDataError(f"--student {args.student} is a {student} model, the teacher a {teacher} model: give the "
                            f"teacher it was distilled from (--teacher)")
    _reviews_path(args.reviews)
    _check_devices(EvaluationConfig(args.teacher, model_name="teacher", **grid_settings(args, out / "results")))
    EmbeddingEvaluationConfig(list(models.values()), ["reviews"], out / "results", model_names=list(models),
                              **embedding_settings(args))


def make_table(args: DemoConfig, models: dict[str, str], out: Path) -> tuple[str, str]:
    """Check the inputs, build the two students, fine-tune and embed the four models, write OUTPUT_DIR/table.md;
    (the table, its note). DistillError on bad input (before any work), a failed run or a full disk."""
    t0 = time.time()
    results = out / "results"
    try:
        check_inputs(args, models, out)
        build_sliced_student(args.teacher, args.student, Path(models["sliced"]))
        build_random_student(args.student, Path(models["random"]), args.random_init_seed)
        timings = fine_tune_all(args, models, results)
        timings["embed"] = embed_all(args, models, results)
        text, note = comparison_table(args, models, results, timings)
        note += f"; total {time.time() - t0:.0f} s"
        atomic_write_bytes(out / "table.md", [(text + "\n\n" + note + "\n").encode("utf-8")])
    except OSError as e:
        if not is_no_space(e):
            raise
        kept = "finished runs and cached embeddings are kept; free space and run the same command again"
        raise DistillError(no_space_message(str(out), e, kept)) from e
    return text, note


def main(argv: list[str] | None = None) -> int:
    """The demo table; 0 done, 2 bad input or a failed run (`error: ...` on stderr; bad input before any work)."""
    from transformers.utils import logging as hf_logging

    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    out = Path(args.output_dir)
    models = dict(zip(ROWS, (args.teacher, args.student, str(out / "sliced-student"), str(out / "random-student")),
                      strict=True))
    try:
        text, note = make_table(args, models, out)
    except DistillError as e:  # bad input (TaskDataError, ...), a failed run, a full disk; a bug: traceback, exit 1
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(text)
    print()
    print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
