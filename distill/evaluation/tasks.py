"""Tasks: what to read, which columns are text and label, which metrics, and where the data lives.

A task's data, whatever its source, comes out of `load_task_data` as a `datasets.DatasetDict`
with a "train" split and the task's evaluation splits, each holding exactly the task's text
columns (str) and "label" (int64 class ids, or float32 for regression).

Sources of the nine GLUE tasks (`nyu-mll/glue` names and label ids throughout):
- no data_dir: the Hugging Face hub, `datasets.load_dataset("nyu-mll/glue", task)`;
- data_dir holding a `save_to_disk` DatasetDict (`dataset_dict.json`), either data_dir itself or
  data_dir/<task> (e.g. glue_disk/cola), with the hub's columns;
- data_dir in the original GLUE download layout: data_dir/CoLA/train.tsv, data_dir/SST-2/dev.tsv,
  ..., or data_dir pointing straight at one task's folder. See `GLUE_TSV` for each file's columns.

The `reviews` task: binary sentiment from the Women's E-Commerce Clothing Reviews table
(assets/reviews/reviews.parquet): see `load_reviews`. Custom tasks: `custom_task`.
"""
from __future__ import annotations

import csv
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..errors import TaskDataError
from .metrics import METRICS, REGRESSION_METRICS

__all__ = ["Task", "TaskDataError", "GLUE_TASKS", "TASKS", "DEFAULT_TASKS", "GLUE_TSV", "REVIEWS_SEED",
           "REVIEWS_DEV_FRACTION", "get_task", "custom_task", "load_task_data", "load_reviews", "default_reviews_path"]


@dataclass(frozen=True)
class Task:
    """One evaluation task. Frozen and JSON-able (`to_dict` / `from_dict`), so a run's settings
    file rebuilds it in a worker process."""

    name: str
    """Task name: results go to OUTPUT_DIR/<model>/<name>/, the summary table's column."""
    text_fields: tuple[str, ...]
    """One column (single sentence) or two (sentence pair), in the order given to the tokenizer."""
    metrics: tuple[str, ...] = ("accuracy",)
    """Metric names from `distill.evaluation.metrics.METRICS`; pearson/spearman make a regression task."""
    label_names: tuple[str, ...] | None = None
    """Class names in label-id order; None for regression."""
    label_field: str = "label"
    """The label column in the source files (renamed to "label" once loaded)."""
    eval_splits: tuple[tuple[str, str], ...] = (("validation", ""),)
    """(split, suffix) pairs; a metric on a split with a suffix is reported as `<metric>_<suffix>`
    (MNLI: accuracy_m, accuracy_mm)."""
    source: str = "glue"
    """"glue", "reviews" or "files"."""
    files: tuple[tuple[str, str], ...] = ()
    """For source "files": (split, path) pairs, CSV / TSV / JSON(L) / parquet."""
    display_name: str = ""
    """The name papers use (CoLA, SST-2, ...), for messages."""

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """The keys of a run's metrics dict, in report order: metric (+ _suffix) per eval split."""
        return tuple(f"{m}_{s}" if s else m for _, s in self.eval_splits for m in self.metrics)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for key in ("text_fields", "metrics", "label_names"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        for key in ("eval_splits", "files"):
            if key in d:
                d[key] = tuple(tuple(x) for x in d[key])
        return cls(**d)


def _glue(name, display, text_fields, metrics, labels, eval_splits=(("validation", ""),)) -> Task:
    return Task(name=name, display_name=display, text_fields=text_fields, metrics=metrics, label_names=labels,
                eval_splits=eval_splits, source="glue")


# nyu-mll/glue columns and ClassLabel names, in GLUE's order
GLUE_TASKS: dict[str, Task] = {t.name: t for t in [
    _glue("cola", "CoLA", ("sentence",), ("mcc",), ("unacceptable", "acceptable")),
    _glue("sst2", "SST-2", ("sentence",), ("accuracy",), ("negative", "positive")),
    _glue("mrpc", "MRPC", ("sentence1", "sentence2"), ("f1", "accuracy"), ("not_equivalent", "equivalent")),
    _glue("stsb", "STS-B", ("sentence1", "sentence2"), ("pearson", "spearman"), None),
    _glue("qqp", "QQP", ("question1", "question2"), ("f1", "accuracy"), ("not_duplicate", "duplicate")),
    _glue("mnli", "MNLI", ("premise", "hypothesis"), ("accuracy",), ("entailment", "neutral", "contradiction"),
          eval_splits=(("validation_matched", "m"), ("validation_mismatched", "mm"))),
    _glue("qnli", "QNLI", ("question", "sentence"), ("accuracy",), ("entailment", "not_entailment")),
    _glue("rte", "RTE", ("sentence1", "sentence2"), ("accuracy",), ("entailment", "not_entailment")),
    _glue("wnli", "WNLI", ("sentence1", "sentence2"), ("accuracy",), ("not_entailment", "entailment")),
]}

REVIEWS = Task(name="reviews", display_name="Reviews", text_fields=("text",), metrics=("accuracy", "f1_macro"),
               label_names=("negative", "positive"), source="reviews")

TASKS: dict[str, Task] = {**GLUE_TASKS, "reviews": REVIEWS}
DEFAULT_TASKS = ("mnli", "qnli", "qqp", "rte", "sst2", "mrpc", "cola", "stsb")  # bertdistiller's; WNLI left out


def get_task(task: "str | Task") -> Task:
    """A Task by name (case-insensitive; "sst-2", "sts-b" work too), or the Task given."""
    if isinstance(task, Task):
        return task
    key = str(task).lower().replace("-", "")
    if key not in TASKS:
        raise TaskDataError(f"unknown task {task!r}: known tasks are {', '.join(TASKS)}; "
                            f"for your own data use a custom task (train/validation files, text and label fields)")
    return TASKS[key]


def custom_task(name: str, train_file: str | os.PathLike, validation_file: str | os.PathLike,
                text_fields: "str | tuple[str, ...] | list[str]", label_field: str = "label",
                metrics: "str | tuple[str, ...] | list[str]" = ("accuracy",),
                labels: "tuple[str, ...] | list[str] | None" = None) -> Task:
    """A task over your own files (CSV, TSV, JSON / JSON lines, parquet; by extension).

    text_fields: one column or two (a pair). metrics: names from METRICS; pearson / spearman make
    it a regression (float labels, one output). labels: the class names in id order; by default the
    distinct train labels, sorted (numerically when they are all numbers).
    """
    text_fields = (text_fields,) if isinstance(text_fields, str) else tuple(text_fields)
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if not name or "/" in name or name.lower().replace("-", "") in TASKS:
        raise TaskDataError(f"custom task name {name!r} must be non-empty, without '/', and not a built-in task "
                            f"({', '.join(TASKS)})")
    if not 1 <= len(text_fields) <= 2:
        raise TaskDataError(f"text_fields={list(text_fields)}: give one text column, or two for sentence pairs")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise TaskDataError(f"metrics={list(metrics)}: choose among {sorted(METRICS)}")
    regression = [m for m in metrics if m in REGRESSION_METRICS]
    if regression and len(regression) != len(metrics):
        raise TaskDataError(f"metrics={list(metrics)} mixes regression ({regression}) and classification metrics")
    if regression and labels is not None:
        raise TaskDataError("labels are class names; a regression task (pearson/spearman) takes none")
    files = []
    for split, path in (("train", train_file), ("validation", validation_file)):
        if path is None:
            raise TaskDataError(f"custom task {name!r}: no {split} file given: pass one (--{split}_file)")
        if not Path(path).is_file():
            raise TaskDataError(f"custom task {name!r}: {split} file {path} not found")
        files.append((split, str(Path(path).resolve())))
    train_columns, _ = _read_table(Path(files[0][1]), text_fields + (label_field,), label_field)  # columns checked
    if regression:
        label_names = None
    elif labels is not None:
        label_names = tuple(str(x) for x in labels)
        if len(set(label_names)) != len(label_names) or len(label_names) < 2:
            raise TaskDataError(f"labels={list(labels)}: give at least two distinct class names")
    else:
        label_names = tuple(_infer_labels(train_columns[label_field], files[0][1], label_field))
    return Task(name=name, text_fields=text_fields, label_field=label_field, metrics=metrics,
                label_names=label_names, source="files", files=tuple(files), display_name=name)


# --------------------------------------------------------------------------- loading
def load_task_data(task: "str | Task", data_dir: str | os.PathLike | None = None, cache_dir: str | None = None):
    """The task's train and eval splits as a DatasetDict of text columns + "label" (see module docstring)."""
    task = get_task(task)
    if task.source == "glue":
        splits = _load_glue(task, data_dir, cache_dir)
    elif task.source == "reviews":
        splits = load_reviews(_reviews_path(data_dir))
    elif task.source == "files":
        splits = {split: _read_table(Path(path), task.text_fields + (task.label_field,), task.label_field)
                  for split, path in task.files}
    else:
        raise TaskDataError(f"task {task.name!r} has unknown source {task.source!r}")
    return _to_datasetdict(task, splits)


def _to_datasetdict(task: Task, splits):
    """splits: {split: DatasetDict-split | (columns dict, where)} -> validated DatasetDict."""
    from datasets import Dataset, DatasetDict

    needed = ["train"] + [s for s, _ in task.eval_splits]
    out = {}
    for split in needed:
        if split not in splits:
            raise TaskDataError(f"task {task.name!r}: no {split!r} split in the data (found {sorted(splits)})")
        data = splits[split]
        if isinstance(data, tuple):
            columns, where = data
        else:  # a datasets.Dataset (hub or save_to_disk)
            where = f"{split} split"
            columns = {c: data[c] for c in data.column_names if c in task.text_fields + (task.label_field,)}
            missing = [c for c in task.text_fields + (task.label_field,) if c not in data.column_names]
            if missing:
                raise TaskDataError(f"task {task.name!r}, {where}: missing column(s) {missing}; "
                                    f"found {data.column_names}")
        texts = {f: _texts(columns[f], where, f) for f in task.text_fields}
        labels = _labels(task, columns[task.label_field], where)
        if not labels.size:
            raise TaskDataError(f"task {task.name!r}, {where}: no examples")
        out[split] = Dataset.from_dict({**texts, "label": labels})
    return DatasetDict(out)


def _texts(values, where: str, field_name: str) -> list[str]:
    """The column as texts; rows without one read as empty (a warning); a column with no text at all refused."""
    out, empty = [], 0
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            empty += 1
            v = ""
        out.append(str(v))
    blank = sum(1 for t in out if not t.strip())
    if out and blank == len(out):
        raise TaskDataError(f"{where}: all {len(out)} rows of column {field_name!r} are empty: name the text "
                            "column(s) with --text_fields (text_fields=...), or fill it")
    if empty:
        print(f"warning: {where}: {empty} row(s) with no {field_name!r} text, read as empty", file=sys.stderr)
    return out


def _labels(task: Task, values, where: str) -> np.ndarray:
    values = list(values)
    if task.is_regression:
        try:
            arr = np.asarray([float(v) for v in values], dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise TaskDataError(f"task {task.name!r}, {where}: label column {task.label_field!r} must hold numbers "
                                f"for a regression task ({e})") from None
        if not np.all(np.isfinite(arr)):
            bad = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise TaskDataError(f"task {task.name!r}, {where}: label of row {bad} is {values[bad]!r}, not a number")
        return arr
    names = task.label_names
    index = {_label_key(n): i for i, n in enumerate(names)}  # names compared as labels are ("1.0" is "1")
    by_position = not any(_as_int(n) is not None for n in index)  # "0"/"1" mean ids when names are words
    ids = np.empty(len(values), dtype=np.int64)
    for row, v in enumerate(values):
        key = _label_key(v)
        if key in index:
            ids[row] = index[key]
        elif by_position and _as_int(key) is not None and 0 <= _as_int(key) < len(names):
            ids[row] = _as_int(key)
        else:
            allowed = list(names) + ([str(i) for i in range(len(names))] if by_position else [])
            raise TaskDataError(f"task {task.name!r}, {where}: label {v!r} of row {row} is outside the task's "
                                f"labels {allowed}")
    return ids


_WHOLE_FLOAT = re.compile(r"^[+-]?\d+\.0*$")  # "1.0", "2.00": a whole number written as a float


def _label_key(v) -> str:
    """A label as the text it is compared by: whole numbers as ints (1.0 and "1.0" are "1")."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        v = int(v)
    if isinstance(v, bytes):
        v = v.decode()
    text = str(v).strip()
    return str(int(float(text))) if _WHOLE_FLOAT.match(text) else text


def _fraction(key: str) -> bool:
    """A finite number with a fractional part (0.5): a score, not a class."""
    try:
        x = float(key)
    except ValueError:
        return False
    return math.isfinite(x) and not x.is_integer()


def _as_int(s: str) -> int | None:
    try:
        return int(s)
    except (TypeError, ValueError):
        return None


def _infer_labels(values, where: str, label_field: str) -> list[str]:
    keys = sorted({_label_key(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))})
    fractions = [k for k in keys if _fraction(k)]
    if fractions:
        shown = ", ".join(sorted(fractions, key=float)[:3]) + (", ..." if len(fractions) > 3 else "")
        raise TaskDataError(f"{where}: label column {label_field!r} holds numbers with fractions ({shown}), not class "
                            f"labels: for graded scores make it a regression task (metrics pearson / spearman; the "
                            f"embedding evaluation: --task_types sts), else give whole-number or named classes, or "
                            f"name the classes with --labels")
    if len(keys) < 2:
        raise TaskDataError(f"{where}: label column {label_field!r} has {len(keys)} distinct value(s) {keys}; "
                            f"a classification task needs at least two")
    try:
        keys.sort(key=float)
    except ValueError:
        pass
    return keys


# ---- custom files
def _read_table(path: Path, columns: tuple[str, ...], label_field: str | None = None):
    """({column: values}, description) from CSV / TSV / JSON(L) / parquet, with a clear error on missing columns."""
    import pandas as pd

    if not path.is_file():
        raise TaskDataError(f"file {path} not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=object)
        elif suffix in (".tsv", ".tab"):
            df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, na_values=[""],
                             dtype=object)
        elif suffix in (".json", ".jsonl"):
            with open(path, encoding="utf-8") as f:
                first = f.read(4096).lstrip()[:1]
            # a JSON array of records, or JSON lines (one object per line)
            df = pd.read_json(path, lines=first != "[", dtype=False)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            raise TaskDataError(f"{path}: unknown file type {suffix!r}; use .csv, .tsv, .json, .jsonl or .parquet")
    except TaskDataError:
        raise
    except Exception as e:  # pandas' parse errors are of many kinds
        raise TaskDataError(f"{path}: could not read it as {suffix[1:]}: {e}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TaskDataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    if label_field is not None and df[label_field].isna().any():
        row = int(np.flatnonzero(df[label_field].isna().to_numpy())[0])
        raise TaskDataError(f"{path}: row {row} has no label in column {label_field!r}")
    return {c: df[c].tolist() for c in columns}, str(path)


# ---- GLUE
@dataclass(frozen=True)
class GlueTsv:
    """A GLUE task's files in the original download layout (https://gluebenchmark.com/tasks)."""

    folder: str
    """Folder under the GLUE data dir."""
    columns: dict = field(default_factory=dict)
    """Our column (hub name, or "label") -> the TSV header's column name, or its index for header-less files."""
    header: bool = True
    files: dict = field(default_factory=lambda: {"train": "train.tsv", "validation": "dev.tsv"})


GLUE_TSV: dict[str, GlueTsv] = {
    # no header; columns: source, label, original judgement ("*" or empty), sentence
    "cola": GlueTsv("CoLA", {"label": 1, "sentence": 3}, header=False),
    # sentence \t label
    "sst2": GlueTsv("SST-2", {"sentence": "sentence", "label": "label"}),
    # Quality \t #1 ID \t #2 ID \t #1 String \t #2 String
    "mrpc": GlueTsv("MRPC", {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}),
    # index genre filename year old_index source1 source2 sentence1 sentence2 score
    "stsb": GlueTsv("STS-B", {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"}),
    # id qid1 qid2 question1 question2 is_duplicate
    "qqp": GlueTsv("QQP", {"question1": "question1", "question2": "question2", "label": "is_duplicate"}),
    # index promptID pairID genre sentence{1,2}_binary_parse sentence{1,2}_parse sentence1 sentence2
    # label1 [...] gold_label
    "mnli": GlueTsv("MNLI", {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
                    files={"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                           "validation_mismatched": "dev_mismatched.tsv"}),
    # index question sentence label
    "qnli": GlueTsv("QNLI", {"question": "question", "sentence": "sentence", "label": "label"}),
    # index sentence1 sentence2 label
    "rte": GlueTsv("RTE", {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}),
    "wnli": GlueTsv("WNLI", {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}),
}


def _load_glue(task: Task, data_dir, cache_dir):
    if data_dir is None:
        import datasets

        try:
            dd = datasets.load_dataset("nyu-mll/glue", task.name, cache_dir=cache_dir)
        except Exception as e:  # offline, hub down, ...: the causes vary by datasets version
            raise TaskDataError(f"could not load GLUE {task.display_name} from the Hugging Face hub "
                                f"(nyu-mll/glue, {task.name}): {type(e).__name__}: {e}. Offline, pass a data dir: the "
                                f"original GLUE TSV layout (DIR/{GLUE_TSV[task.name].folder}/train.tsv ...) or a "
                                f"save_to_disk directory") from None
        return dict(dd)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise TaskDataError(f"data dir {data_dir} not found")
    for candidate in (data_dir / task.name, data_dir):
        if (candidate / "dataset_dict.json").is_file():
            import datasets

            return dict(datasets.load_from_disk(str(candidate)))
    spec = GLUE_TSV[task.name]
    folder = next((d for d in (data_dir / spec.folder, data_dir / task.name, data_dir)
                   if (d / spec.files["train"]).is_file()), None)
    if folder is None:
        raise TaskDataError(f"no GLUE {task.display_name} data under {data_dir}: expected "
                            f"{data_dir / spec.folder}/{{{','.join(spec.files.values())}}} (the original GLUE layout), "
                            f"or a save_to_disk directory at {data_dir / task.name}")
    return {split: _read_glue_tsv(folder / name, spec) for split, name in spec.files.items()
            if split == "train" or split in dict(task.eval_splits)}


def _read_glue_tsv(path: Path, spec: GlueTsv):
    """({column: values}, path) of one GLUE TSV, read without quote handling, as GLUE's own readers do."""
    if not path.is_file():
        raise TaskDataError(f"GLUE file {path} not found (expected files: {', '.join(spec.files.values())})")
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if spec.header:
        if not rows:
            raise TaskDataError(f"{path}: empty file; expected a header row")
        header, rows = rows[0], rows[1:]
        missing = [name for name in spec.columns.values() if name not in header]
        if missing:
            raise TaskDataError(f"{path}: missing column(s) {missing} in the header {header}")
        index = {ours: header.index(theirs) for ours, theirs in spec.columns.items()}
    else:
        index = dict(spec.columns)
    width = max(index.values()) + 1
    good = [r for r in rows if len(r) >= width]
    skipped = sum(1 for r in rows if r and len(r) < width)
    if skipped:
        print(f"warning: {path}: skipped {skipped} malformed line(s) with fewer than {width} fields", file=sys.stderr)
    return {ours: [r[i] for r in good] for ours, i in index.items()}, str(path)


# ---- reviews
REVIEWS_SEED = 0
"""Seed of the fixed permutation that splits the reviews into train and dev."""
REVIEWS_DEV_FRACTION = 0.1
"""Share of the kept reviews (rounded down) that forms the dev split."""


def default_reviews_path() -> Path:
    """$DISTILL_ASSETS/reviews/reviews.parquet, else the checkout's assets/ (paths.assets_dir)."""
    from ..paths import assets_dir

    return assets_dir() / "reviews" / "reviews.parquet"


def _reviews_path(data_dir) -> Path:
    """The reviews table: in `data_dir` (the file, or a folder holding reviews.parquet or reviews/reviews.parquet),
    else the default; a `data_dir` that does not exist is refused, not replaced by the default."""
    if data_dir is not None:
        p = Path(data_dir)
        if not p.exists():
            raise TaskDataError(f"reviews data {data_dir}: no such file or directory; give the reviews parquet (or "
                                "its folder), or leave the data dir out to use the offline assets")
        for candidate in (p, p / "reviews.parquet", p / "reviews" / "reviews.parquet"):
            if candidate.is_file():
                return candidate
    p = default_reviews_path()
    if not p.is_file():
        raise TaskDataError(f"reviews table not found at {p}: run `bash tools/fetch_offline_assets.sh`, set "
                            f"DISTILL_ASSETS, or pass the parquet file (or its folder) as data dir")
    return p


def load_reviews(path: str | os.PathLike) -> dict:
    """{split: (columns, where)} of the reviews task.

    Rows: those with a review text and a rating other than 3, in file order; label 1 (positive) for
    rating >= 4, 0 (negative) for rating <= 2. Text: the title, when present, then the review text
    ("Love it! So comfy ..."). Split: `numpy.random.default_rng(REVIEWS_SEED).permutation(n)` of the
    kept rows; its first floor(REVIEWS_DEV_FRACTION * n) rows are dev ("validation"), the rest train,
    both in that permuted order.
    """
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_parquet(path, columns=["Title", "Review Text", "Rating"])
    except Exception as e:
        raise TaskDataError(f"{path}: could not read the reviews table (columns Title, Review Text, Rating): "
                            f"{e}") from None
    review = df["Review Text"].fillna("").astype(str).str.strip()
    rating = pd.to_numeric(df["Rating"], errors="coerce")
    keep = (review != "") & rating.notna() & (rating != 3)
    title = df["Title"].fillna("").astype(str).str.strip()[keep].tolist()
    review = review[keep].tolist()
    labels = (rating[keep] >= 4).astype("int64").to_numpy()
    texts = [f"{t}{'' if t[-1] in '.!?' else '.'} {r}" if t else r for t, r in zip(title, review, strict=True)]
    order = np.random.default_rng(REVIEWS_SEED).permutation(len(texts))
    n_dev = int(len(texts) * REVIEWS_DEV_FRACTION)
    out = {}
    for split, idx in (("validation", order[:n_dev]), ("train", order[n_dev:])):
        out[split] = ({"text": [texts[i] for i in idx], "label": labels[idx].tolist()}, f"{path} ({split})")
    return out
