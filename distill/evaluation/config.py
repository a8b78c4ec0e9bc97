"""`EvaluationConfig`: everything one `evaluate` call (and one `distill-evaluate` command) is given.

The fields are the command's flags (`distill.cli_args.add_arguments` generates the parser from them,
the docs being the help) and `evaluate`'s keyword arguments:

    evaluate(EvaluationConfig("runs/minilm/student", tasks=["sst2"], learning_rate=[1e-5, 3e-5]))
    evaluate("runs/minilm/student", tasks=["sst2"], learning_rate=[1e-5, 3e-5])   # the same

`__post_init__` checks what needs no model, data or GPU, and brings the values to one form: the
grid values become lists without repeats, task names become `Task`s (a task named twice is run once,
with a note), device texts become indices, `overwrite="changed"` becomes `redo_changed=True`; a custom
task needs both files, and two different ones. Mistakes raise `TaskDataError` (exit status 2).
"""
from __future__ import annotations

import os
import sys
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

from ..cli_args import option
from .finetune import PRECISIONS
from .summary import AGGREGATIONS
from .tasks import DEFAULT_TASKS, TASKS, Task, TaskDataError, custom_task, get_task

__all__ = ["EvaluationConfig", "CUSTOM_TASK", "same_file"]

CUSTOM_TASK = "custom task (your own files)"  # the help section of the custom task's flags


@dataclass
class EvaluationConfig:
    """One model's fine-tuning grid: tasks x learning rates x epochs x seeds, and the settings every run shares."""

    # The first six may be given by position, as `evaluate`'s arguments always could.
    model_name_or_path: str | os.PathLike = option(
        "model directory (with its tokenizer) or hub name", positional=True)
    tasks: str | Task | list[str | Task] | None = option(
        f"among {', '.join(TASKS)}; default {' '.join(DEFAULT_TASKS)} (only the custom task when --train_file "
        f"is given)", default=None)
    learning_rate: float | list[float] = option(
        "grid: peak AdamW learning rates (linear warmup and decay)", default_factory=lambda: [1e-5, 3e-5, 5e-5])
    epochs: float | list[float] = option("grid: training epochs", default_factory=lambda: [3, 5, 10])
    seeds: int | list[int] = option("grid: seeds (head init, dropout, order)", default_factory=lambda: [42])
    output_dir: str | os.PathLike = option(
        "results root; runs go to OUTPUT_DIR/MODEL_NAME/TASK/lr<lr>_ep<epochs>_seed<seed>/",
        default="./evaluation_results")
    _: KW_ONLY
    model_name: str | None = option("row name in the table; default the model dir's name", default=None)
    tokenizer_name: str | None = option("tokenizer dir or hub name, if not the model's", default=None)
    data_dir: str | os.PathLike | dict[str, str] | None = option(  # from Python also {task name: directory}
        "GLUE data in the original TSV layout or a save_to_disk dir; the reviews parquet (or its folder); default "
        "the hub / the offline assets", default=None)
    per_device_train_batch_size: int = option("training batch (one device per run)", default=32)
    per_device_eval_batch_size: int = option("evaluation batch", default=64)
    max_seq_length: int = option("truncate inputs to this many tokens", default=128)
    warmup_ratio: float = option("share of the steps spent warming up", default=0.1)
    weight_decay: float = option("AdamW weight decay", default=0.01)
    max_train_samples: int | None = option("train on a fixed random subset", default=None)
    max_eval_samples: int | None = option("evaluate on a fixed random subset", default=None)
    precision: str = option("bf16 / fp16 mixed precision need a CUDA GPU", default="fp32", choices=PRECISIONS)
    cache_dir: str | None = option("Hugging Face cache for hub models and datasets", default=None)
    devices: list[int | str] | None = option(
        "run in worker processes, one run per device at a time: GPU indices or 'cpu'; default all GPUs when "
        "several are visible, else in this process", default=None)
    # From Python also overwrite="changed" (evaluate's older form), turned into redo_changed=True.
    overwrite: bool = option("redo every run, finished or not", default=False)
    redo_changed: bool = option("redo finished runs made with other settings or another model (by default those "
                                "are refused before training)", default=False)
    group_by_length: bool = option("batch examples of similar length together (less padding: faster on CPU)",
                                   default=False)
    # The command's closing table; evaluate() itself prints none.
    aggregation: str = option("for the table printed at the end", default="best", choices=AGGREGATIONS)
    task_name: str = option("its name in the results and the table", default="custom", group=CUSTOM_TASK)
    train_file: str | None = option("CSV, TSV, JSON / JSON lines or parquet", default=None, group=CUSTOM_TASK)
    validation_file: str | None = option("the dev split, same format", default=None, group=CUSTOM_TASK)
    text_fields: list[str] = option("one column, or two for pairs", default_factory=lambda: ["text"],
                                    group=CUSTOM_TASK)
    label_field: str = option("the label column", default="label", group=CUSTOM_TASK)
    metrics: list[str] = option("accuracy f1 f1_macro mcc (classification), pearson spearman (regression)",
                                default_factory=lambda: ["accuracy"], group=CUSTOM_TASK)
    labels: list[str] | None = option("class names in id order; default: the train labels, sorted", default=None,
                                      group=CUSTOM_TASK)
    disable_tqdm: bool | None = option("passed to the Trainer of in-process runs (None: its default)",
                                       default=None, flag=False)
    seed: int | None = option("bertdistiller's single-seed argument: the same as seeds=[seed]", default=None,
                              flag=False)

    def __post_init__(self):
        self.model_name_or_path = os.fspath(self.model_name_or_path)
        if self.seed is not None:
            self.seeds = [self.seed]
        self.learning_rate = _as_list(self.learning_rate, float, "learning_rate")
        self.epochs = _as_list(self.epochs, float, "epochs")
        self.seeds = _as_list(self.seeds, int, "seeds")
        _check_numbers(self)
        _check_split_files(self.train_file, self.validation_file)
        self.tasks = _as_tasks(self.tasks, custom=self.train_file is not None or self.validation_file is not None,
                               default=DEFAULT_TASKS if self.train_file is None else ())
        if self.overwrite == "changed":
            self.overwrite, self.redo_changed = False, True
        if not isinstance(self.overwrite, bool):
            raise TaskDataError(f"overwrite={self.overwrite!r}: choose False, True or 'changed'")
        if self.aggregation not in AGGREGATIONS:
            raise TaskDataError(f"aggregation={self.aggregation!r}: choose among {', '.join(AGGREGATIONS)}")
        self.devices = _as_devices(self.devices)
        self.model_name = self.model_name or Path(self.model_name_or_path.rstrip("/")).name
        if not self.model_name or self.model_name in (".", "..") or "/" in self.model_name:
            raise TaskDataError(f"model_name={self.model_name!r}: give a plain name for the results folder and "
                                f"table row")

    @property
    def overwrite_mode(self) -> bool | str:
        """True: redo every run; "changed": redo finished runs made with other settings; False: redo none."""
        return True if self.overwrite else "changed" if self.redo_changed else False

    def task_list(self) -> list[Task]:
        """The tasks, the custom task (built from its files, which are read and checked) last."""
        tasks = list(self.tasks)
        if self.train_file is not None or self.validation_file is not None:
            tasks.append(custom_task(self.task_name, self.train_file, self.validation_file, self.text_fields,
                                     self.label_field, self.metrics, self.labels))
        unique: dict[str, Task] = {}
        for task in tasks:
            unique.setdefault(task.name, task)  # the first of each name, in order
        return list(unique.values())


def _as_list(value, kind, name) -> list:
    values = [value] if isinstance(value, (int, float, str)) else list(value)
    if not values:
        raise TaskDataError(f"{name} is empty: give at least one value")
    try:
        out = [kind(v) for v in values]
    except (TypeError, ValueError):
        raise TaskDataError(f"{name}={values!r}: expected {kind.__name__} values") from None
    if kind is int and any(float(v) != int(v) for v in values):
        raise TaskDataError(f"{name}={values!r}: expected whole numbers")
    return list(dict.fromkeys(out))  # drop repeats, keep order


def _as_tasks(tasks, custom: bool, default) -> list[Task]:
    """Task names resolved (unknown ones refused, with the known ones listed); None: `default`. A task named
    more than once is kept once (the first), with a note."""
    items = default if tasks is None else [tasks] if isinstance(tasks, (str, Task)) else list(tasks)
    if not items and not custom:
        raise TaskDataError("no tasks given: name some (tasks=['sst2'], --tasks sst2) or give a custom task's "
                            "train_file and validation_file")
    unique: dict[str, Task] = {}
    names = [get_task(t).name for t in items]
    for task in items:
        unique.setdefault(get_task(task).name, get_task(task))
    for name in unique:
        if names.count(name) > 1:
            print(f"note: task {name} is named {names.count(name)} times: it is run once", file=sys.stderr, flush=True)
    return list(unique.values())


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (through links too; by their resolved paths when one does not exist)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _check_split_files(train_file, validation_file) -> None:
    """A custom task (fine-tuned) needs a train file and another file to measure on."""
    if train_file is None and validation_file is None:
        return
    for flag, given, other in (("--validation_file", validation_file, "the dev split the scores are measured on"),
                               ("--train_file", train_file, "the rows fine-tuned on")):
        if given is None:
            raise TaskDataError(f"custom task: no {flag} given: pass {flag} ({other}; CSV, TSV, JSON lines or "
                                "parquet)")
    if same_file(train_file, validation_file):
        raise TaskDataError(f"--train_file and --validation_file are the same file ({train_file}): the score would "
                            "be measured on the rows it was trained on; give a separate dev file")


def _as_devices(devices) -> list[int | str] | None:
    """CUDA indices (ints; digit strings from the command line) or "cpu"; None: chosen by the grid."""
    if devices is None:
        return None
    devices = list(devices)
    ok = devices and all(d == "cpu" or (isinstance(d, int) and d >= 0) or (isinstance(d, str) and d.isdigit())
                         for d in devices)
    if not ok:
        raise TaskDataError(f"devices={devices}: give GPU indices (--devices 0 1 ...) or 'cpu'")
    return [d if d == "cpu" else int(d) for d in devices]


def _check_numbers(config: EvaluationConfig) -> None:
    problems = []
    if any(not lr > 0 for lr in config.learning_rate):
        problems.append(f"learning_rate={config.learning_rate} must be > 0")
    if any(not e > 0 for e in config.epochs):
        problems.append(f"epochs={config.epochs} must be > 0")
    if any(not 0 <= s < 2 ** 32 for s in config.seeds):  # numpy's range: set_seed would fail in every run
        problems.append(f"seeds={config.seeds} must be whole numbers from 0 to {2 ** 32 - 1}")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "max_seq_length"):
        v = getattr(config, key)
        if not isinstance(v, int) or v < 1:
            problems.append(f"{key}={v!r} must be a positive integer")
    for key in ("max_train_samples", "max_eval_samples"):
        v = getattr(config, key)
        if v is not None and (not isinstance(v, int) or v < 1):
            problems.append(f"{key}={v!r} must be a positive integer or None (all)")
    if not 0 <= config.warmup_ratio < 1:
        problems.append(f"warmup_ratio={config.warmup_ratio} must be in [0, 1)")
    if config.weight_decay < 0:
        problems.append(f"weight_decay={config.weight_decay} must be >= 0")
    if config.precision not in PRECISIONS:
        problems.append(f"precision={config.precision!r}: choose among {', '.join(PRECISIONS)}")
    if problems:
        raise TaskDataError("; ".join(problems))
