"""The summary table: models as rows, tasks as columns, an average; scores x 100.

It reads RESULTS_DIR/<model>/<task>/<run>/metrics.json, the files the grid writes. A hand-written one
needs only {"metrics": {"mcc": 0.52}} (fractions, as the metric functions return them), plus
"learning_rate", "epochs", "seed" for the hyper-parameter table (else they are read from the run's
settings.json, unless it does not match the checksum beside it: settings.json.sha256). Every metric is
checked: a known name (distill.evaluation.metrics.METRICS, with _SUFFIX for a split, as "accuracy_mm"), a
number, within its range (METRIC_RANGES: [0, 1] for accuracy, f1, f1_macro; [-1, 1] for mcc, pearson,
spearman); a file that fails is refused (TaskDataError, naming it).

A task's score is the mean of its metrics, the GLUE benchmark's per-task score: CoLA MCC; STS-B
(Pearson + Spearman) / 2; MRPC and QQP (F1 + accuracy) / 2; MNLI (matched + mismatched accuracy) / 2;
reviews (accuracy + macro F1) / 2; the others accuracy. Over a task's runs (the grid):
- best (default): the run with the highest score, the papers' dev-set convention;
- mean / median: the mean / median over all the task's finished runs.
With metrics="all" every metric gets its own column (`mrpc/f1`, `mnli/accuracy_mm`, ...): the best
run's values, or each metric's mean / median over the runs. The average column is the mean of the
task scores; it is empty for a model that misses one of the table's tasks.

Results of the embedding evaluation (distill.evaluation.embedding_eval, MTEB's scores: a metrics.json
with "kind": "embeddings", in RESULTS_DIR/<model>/<task>/embeddings_<pooling>_len<L>/) add columns after
the average, which leaves them out: one per task and type, `<task>/<metric>` (`reviews/cls-acc`,
`reviews/cluster-v`, `mrpc/pair-ap`, `stsb/sts-spearman`, an MTEB task's as `Banking77Classification/cls-acc`;
with metrics="all" also `reviews/cls-f1`).
Over several such runs of a model and task (other poolings or lengths), "best" takes the run with the
highest mean of its main metrics, mean / median aggregate each metric; the hyper-parameter table names
the run in the column `<task>/embeddings`.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..io import atomic_write_bytes
from ..paths import is_no_space, no_space_message, output_dir_problem
from .finetune import METRICS_NAME, SETTINGS_NAME, checksum_path, read_checked_json
from .metrics import EMBEDDING_MAIN_METRICS, metric_value_problem
from .tasks import GLUE_TASKS, TASKS, TaskDataError

__all__ = ["Summary", "collect_runs", "summarize", "create_summary_table", "markdown_table", "AGGREGATIONS"]

AGGREGATIONS = ("best", "mean", "median")
AVERAGE = "avg"
FINETUNE, EMBEDDINGS = "finetune", "embeddings"  # a run's kind: fine-tuning grid, or embedding evaluation


@dataclass
class Summary:
    scores: "object"  # pandas DataFrame: models x task columns (+ "avg"), x 100
    hyperparameters: "object"  # DataFrame: models x tasks, the chosen run's "lr=3e-05 epochs=3 seed=42"
    runs: "object"  # DataFrame: one row per finished run (model, task, learning_rate, epochs, seed, score, metrics)
    aggregation: str

    def to_markdown(self, digits: int = 2) -> str:
        return markdown_table(self.scores, digits=digits)


def read_metrics(path: Path) -> tuple[dict, dict[str, float]]:
    """A metrics.json and its metrics, checked: TaskDataError naming the file and the key for an unknown
    metric, a value that is not a number, or one outside the metric's range (METRIC_RANGES)."""
    try:
        result = json.loads(path.read_text())
        metrics = dict(result["metrics"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise TaskDataError(f"{path}: not a metrics file ({type(e).__name__}: {e}); expected "
                            f'{{"metrics": {{"name": fraction, ...}}, ...}}') from None
    embeddings = result.get("kind") == EMBEDDINGS
    for key, value in metrics.items():
        problem = metric_value_problem(key, value, embeddings)
        if problem:
            raise TaskDataError(f"{path}: {problem}; fix the file, or move the run out of the results directory")
    return result, {k: float(v) for k, v in metrics.items()}


def collect_runs(results_dir: str | os.PathLike) -> list[dict]:
    """One record per finished run under RESULTS_DIR/<model>/<task>/<run>/metrics.json."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise TaskDataError(f"results dir {results_dir} not found")
    records = []
    for path in sorted(results_dir.glob(f"*/*/*/{METRICS_NAME}")):
        run_dir = path.parent
        model, task = run_dir.parent.parent.name, run_dir.parent.name
        result, metrics = read_metrics(path)
        if result.get("kind") == EMBEDDINGS:
            records.append(_embedding_record(path, result, metrics))
            continue
        keys = list(TASKS[task].metric_keys) if task in TASKS else list(result.get("metric_keys") or metrics)
        missing = [k for k in keys if k not in metrics]
        if missing:
            raise TaskDataError(f"{path}: task {task!r} needs metric(s) {missing}; found {sorted(metrics)}")
        hp = dict(result)
        if not all(k in hp for k in ("learning_rate", "epochs", "seed")):
            hp = {**_settings(run_dir / SETTINGS_NAME), **hp}
        records.append({
            "model": model, "task": task, "run": run_dir.name, "kind": FINETUNE,
            "learning_rate": hp.get("learning_rate"), "epochs": hp.get("epochs"), "seed": hp.get("seed"),
            "score": sum(metrics[k] for k in keys) / len(keys),
            "metrics": {k: metrics[k] for k in keys},
        })
    return records


def _settings(path: Path) -> dict:
    """A hand-written run's settings.json (for its hyper-parameters); one the grid wrote must match its checksum,
    else it is left out with a note; {} when there is none."""
    if checksum_path(path).exists():
        settings, problem = read_checked_json(path)
        if problem:
            print(f"note: {problem}: its hyper-parameters are left out of the table", file=sys.stderr, flush=True)
        return settings or {}
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def _embedding_record(path: Path, result: dict, metrics: dict[str, float]) -> dict:
    """A run of the embedding evaluation: its score is the mean of its main metrics (one per task type)."""
    keys = list(result.get("metric_keys") or metrics)
    main = list(result.get("main_metrics") or [k for k in keys if k in EMBEDDING_MAIN_METRICS])
    missing = [k for k in dict.fromkeys(keys + main) if k not in metrics]
    if missing or not main:
        raise TaskDataError(f"{path}: an embedding result needs metric(s) {missing or EMBEDDING_MAIN_METRICS}; "
                            f"found {sorted(metrics)}")
    run_dir = path.parent
    return {"model": run_dir.parent.parent.name, "task": run_dir.parent.name, "run": run_dir.name,
            "kind": EMBEDDINGS, "learning_rate": None, "epochs": None, "seed": None,
            "score": sum(metrics[k] for k in main) / len(main), "metrics": {k: metrics[k] for k in keys},
            "main": main}


def summarize(results_dir: str | os.PathLike, aggregation: str = "best", metrics: str = "main",
              models: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
              include_average: bool = True) -> Summary:
    """The table of RESULTS_DIR's runs (see the module docstring); models/tasks select and order rows/columns."""
    import numpy as np
    import pandas as pd

    if aggregation not in AGGREGATIONS:
        raise TaskDataError(f"aggregation={aggregation!r}: choose among {', '.join(AGGREGATIONS)}")
    if metrics not in ("main", "all"):
        raise TaskDataError(f"metrics={metrics!r}: choose 'main' (one score per task) or 'all' (every metric)")
    records = collect_runs(results_dir)
    if not records:
        raise TaskDataError(f"no finished runs under {results_dir} (expected <model>/<task>/<run>/{METRICS_NAME})")
    models, tasks = _rows_and_tasks(records, models, tasks, results_dir)
    finetuned = [t for t in tasks if any(r["task"] == t and r["kind"] == FINETUNE for r in records)]
    rows = {m: {} for m in models}  # {model: {(kind, task, metric or ""): value}}
    hps = {m: {} for m in models}  # {model: {hyper-parameter column: text}}
    for model in models:
        for task in tasks:
            for kind in (FINETUNE, EMBEDDINGS):
                runs = [r for r in records if (r["model"], r["task"], r["kind"]) == (model, task, kind)]
                if runs:
                    _aggregate(runs, aggregation, rows[model], hps[model])
    columns = [(FINETUNE, t, "") for t in finetuned] if metrics == "main" else _keys(rows, FINETUNE, finetuned)
    table = pd.DataFrame([[rows[m].get(c, np.nan) for c in columns] for m in models], index=models,
                         columns=[t if not k else f"{t}/{k}" for _, t, k in columns], dtype=float)
    if include_average and finetuned:
        task_scores = np.array([[rows[m].get((FINETUNE, t, ""), np.nan) for t in finetuned] for m in models],
                               dtype=float)
        table[AVERAGE] = task_scores.mean(axis=1)  # NaN when a task is missing: averages over other tasks mislead
    for column in _keys(rows, EMBEDDINGS, tasks, main_only=metrics == "main"):  # after avg: not in it
        table[f"{column[1]}/{column[2]}"] = [rows[m].get(column, np.nan) for m in models]
    table.index.name = "model"
    hp_columns = list(dict.fromkeys(c for t in tasks for c in (t, f"{t}/{EMBEDDINGS}") if any(c in h for h in
                                                                                             hps.values())))
    hyper = pd.DataFrame([[hps[m].get(c, "") for c in hp_columns] for m in models], index=models, columns=hp_columns)
    hyper.index.name = "model"
    runs_df = pd.DataFrame([{**{k: v for k, v in r.items() if k not in ("metrics", "main")},
                             **{f"{r['task']}/{k}": v for k, v in r["metrics"].items()}} for r in records])
    return Summary(table, hyper, runs_df, aggregation)


def _rows_and_tasks(records: list[dict], models, tasks, results_dir) -> tuple[list[str], list[str]]:
    """The rows (models) and tasks asked for, checked against those found; by default all, tasks in GLUE order."""
    found_models = list(dict.fromkeys(r["model"] for r in records))
    found_tasks = list(dict.fromkeys(r["task"] for r in records))
    for kind, asked, found in (("model", models, found_models), ("task", tasks, found_tasks)):
        unknown = [x for x in (asked or []) if x not in found]
        if unknown:
            raise TaskDataError(f"{kind}(s) {unknown} have no finished runs under {results_dir}; found {found}")
    glue_order = list(GLUE_TASKS)
    tasks = list(tasks) if tasks else sorted(found_tasks, key=lambda t: (glue_order.index(t) if t in glue_order
                                                                           else len(glue_order), t))
    return list(models) if models else sorted(found_models), tasks


def _aggregate(runs: list[dict], aggregation: str, row: dict, hp: dict) -> None:
    """One model's runs of one task and kind into its row ({(kind, task, metric or ""): x 100}) and hyper-parameters."""
    import numpy as np

    kind, task = runs[0]["kind"], runs[0]["task"]
    runs.sort(key=lambda r: (_num(r["learning_rate"]), _num(r["epochs"]), _num(r["seed"]), r["run"]))
    keys = list(runs[0]["metrics"])
    hp_column = task if kind == FINETUNE else f"{task}/{EMBEDDINGS}"
    if aggregation == "best":
        chosen = max(runs, key=lambda r: r["score"])  # the first of equals, in grid order
        score, values = chosen["score"], chosen["metrics"]
        hp[hp_column] = chosen["run"] if kind == EMBEDDINGS else (
            f"lr={_fmt(chosen['learning_rate'])} epochs={_fmt(chosen['epochs'])} seed={_fmt(chosen['seed'])}")
    else:
        reduce = {"mean": np.mean, "median": np.median}[aggregation]
        score = float(reduce([r["score"] for r in runs]))
        values = {k: float(reduce([r["metrics"][k] for r in runs])) for k in keys}
        hp[hp_column] = f"{aggregation} of {len(runs)} runs" + ("" if kind == EMBEDDINGS else (
            f": lr {_set(runs, 'learning_rate')} epochs {_set(runs, 'epochs')} seed {_set(runs, 'seed')}"))
    if kind == FINETUNE:
        row[(kind, task, "")] = 100 * score
    for k in keys:
        row[(kind, task, k)] = 100 * values[k]
    if kind == EMBEDDINGS:
        row[(kind, task, "main")] = runs[0]["main"]


def _keys(rows: dict, kind: str, tasks: list[str], main_only: bool = False) -> list[tuple[str, str, str]]:
    """The (kind, task, metric) columns found in the rows, by task, metrics in their order (main ones only)."""
    out = []
    for t in tasks:
        for row in rows.values():
            main = row.get((kind, t, "main")) if main_only else None
            out += [c for c in row if c[:2] == (kind, t) and c[2] not in ("", "main") and (main is None or c[2] in
                                                                                       main)]
    return list(dict.fromkeys(out))


def create_summary_table(results_dir: str | os.PathLike, save: bool = True, output_file: str | None = None,
                         include_average: bool = True, round_decimals: int = 2, aggregation: str = "best",
                         metrics: str = "main", models: Sequence[str] | None = None,
                         tasks: Sequence[str] | None = None) -> "object":
    """bertdistiller's name: the summary as a DataFrame (models x tasks + "avg", x 100, rounded).

    The chosen hyper-parameters per task are in `df.attrs["hyperparameters"]` (a DataFrame).
    save: write the table as CSV to `output_file` (default RESULTS_DIR/summary.csv), and the
    hyper-parameters beside it (summary_hyperparameters.csv).
    """
    path = Path(output_file) if output_file else Path(results_dir) / "summary.csv"
    if save:  # checked before the results are read
        problem = (f"--output {path} is a directory; give a file name" if path.is_dir()
                   else output_dir_problem(path.parent, "--output's directory"))
        if problem:
            raise TaskDataError(problem)
    summary = summarize(results_dir, aggregation, metrics, models, tasks, include_average)
    table = summary.scores.round(round_decimals)
    if save:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # each file whole or not at all
            atomic_write_bytes(path, [table.to_csv().encode("utf-8")])
            atomic_write_bytes(path.with_name(f"{path.stem}_hyperparameters.csv"),
                               [summary.hyperparameters.to_csv().encode("utf-8")])
        except OSError as e:
            if not is_no_space(e):
                raise
            raise TaskDataError(no_space_message(str(path), e, "the results were not changed; free space and "
                                                 "run the summary again")) from e
    table.attrs["hyperparameters"] = summary.hyperparameters
    table.attrs["aggregation"] = aggregation
    return table


def markdown_table(df, digits: int = 2, index_name: str | None = None) -> str:
    """A DataFrame as a GitHub Markdown table; numbers with `digits` decimals, missing as "-"."""
    import math

    def cell(v):
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    head = [index_name or df.index.name or ""] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:" if df[c].dtype.kind in "fiu" else "---" for c in df.columns]) + "|"]
    for idx, row in zip(df.index, df.astype(object).itertuples(index=False), strict=True):  # object: ints stay ints
        lines.append("| " + " | ".join([str(idx)] + [cell(v) for v in row]) + " |")
    return "\n".join(lines)


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("inf")


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _set(runs, key) -> str:
    values = sorted({r[key] for r in runs if r[key] is not None}, key=_num)
    return "{" + ",".join(_fmt(v) for v in values) + "}"
