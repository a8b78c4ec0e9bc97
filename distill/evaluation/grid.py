"""The grid: every (task, learning rate, epochs, seed) of one model, each run in its own directory.

    OUTPUT_DIR/<model_name>/<task>/lr<lr>_ep<epochs>_seed<seed>/{settings.json, metrics.json}

Everything that can be wrong with the input (task names, files, columns, labels, tokenizer,
hyper-parameters, finished runs made with other settings) is checked before the first run
trains. A run whose metrics.json exists is skipped; a run directory without one (an interrupted
or failed run) is cleared and run again. One run failing is reported and the others go on.

Devices: on CPU or one GPU the runs go one after the other in this process. With several CUDA
GPUs visible (or `devices` given) each device gets a worker thread that runs one run at a time in
a subprocess (`python -m distill.evaluation.finetune RUN_DIR`, CUDA_VISIBLE_DEVICES set to its
GPU), so independent runs share the GPUs.
"""
from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..shards import atomic_write_json
from .finetune import (COMPARED_SETTINGS, ERROR_NAME, METRICS_NAME, PRECISIONS, SETTINGS_NAME, RunSettings,
                       check_model, load_tokenizer, model_fingerprint, run_finetune)
from .tasks import DEFAULT_TASKS, Task, TaskDataError, get_task, load_task_data

__all__ = ["evaluate", "run_name", "read_finished"]

REPO_ROOT = Path(__file__).resolve().parents[2]  # on the workers' PYTHONPATH, for an uninstalled checkout


def run_name(learning_rate: float, epochs: float, seed: int) -> str:
    """Run directory name: lr3e-05_ep3_seed42."""
    return f"lr{learning_rate:g}_ep{epochs:g}_seed{seed}"


def read_finished(run_dir: Path) -> dict | None:
    """The run's metrics.json if it finished, else None."""
    try:
        result = json.loads((Path(run_dir) / METRICS_NAME).read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and isinstance(result.get("metrics"), dict) else None


@dataclass
class _Run:
    index: int  # 1-based position in the grid, for the progress lines
    task: Task
    settings: RunSettings
    run_dir: Path
    status: str = "pending"  # pending | skipped | finished | failed
    result: dict | None = None
    error: str | None = None
    label: str = field(default="")


def evaluate(
    model_name_or_path: str | os.PathLike,
    tasks: "str | Task | Iterable[str | Task]" = DEFAULT_TASKS,
    learning_rate: "float | Sequence[float]" = (1e-5, 3e-5, 5e-5),
    epochs: "float | Sequence[float]" = (3, 5, 10),
    seeds: "int | Sequence[int]" = (42,),
    output_dir: str | os.PathLike = "./evaluation_results",
    *,
    model_name: str | None = None,
    tokenizer_name: str | None = None,
    data_dir: "str | os.PathLike | dict | None" = None,
    per_device_train_batch_size: int = 32,
    per_device_eval_batch_size: int = 64,
    max_seq_length: int = 128,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    group_by_length: bool = False,
    precision: str = "fp32",
    cache_dir: str | None = None,
    devices: "Sequence[int | str] | None" = None,
    overwrite: "bool | str" = False,
    disable_tqdm: bool | None = None,
    seed: int | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Fine-tune `model_name_or_path` on every task over the grid learning_rate x epochs x seeds.

    Args:
        model_name_or_path: a Hugging Face model directory (with its tokenizer) or hub name.
        tasks: names from `distill.evaluation.TASKS` (the nine GLUE tasks and "reviews") and/or
            `custom_task(...)` objects; default the eight GLUE tasks other than WNLI.
        learning_rate, epochs, seeds: the grid (one value or a list each).
        output_dir: results root; this model's runs go under OUTPUT_DIR/<model_name>/.
        model_name: the model's row in the summary table; default the directory's base name.
        tokenizer_name: tokenizer directory or hub name, when not the model's own.
        data_dir: where the data is (see `distill.evaluation.tasks`): one directory for all tasks,
            or {task name: directory}; None: the hub for GLUE, the offline assets for reviews.
        per_device_train_batch_size, per_device_eval_batch_size, max_seq_length, warmup_ratio,
        weight_decay, max_train_samples, max_eval_samples, group_by_length, precision, cache_dir:
            see `RunSettings`.
        devices: run the grid in worker subprocesses, one per entry at a time: CUDA device
            indices, or "cpu". Default: all GPUs when more than one is visible, else in-process.
        overwrite: False: skip finished runs, and refuse (before training) finished runs made with
            other settings or another model; True: redo every run; "changed": redo only those.
        disable_tqdm: passed to the Trainer (in-process runs).
        seed: bertdistiller's single-seed argument; same as seeds=[seed].
        log: where progress lines go (default: print to stdout).

    Returns one record per run: task, learning_rate, epochs, seed, run_dir, status
    ("finished", "skipped" = finished earlier, "failed"), metrics (fractions), error.
    """
    say = log or (lambda line: print(line, flush=True))
    if seed is not None:
        seeds = [seed]
    lrs = _as_list(learning_rate, float, "learning_rate")
    eps = _as_list(epochs, float, "epochs")
    seed_list = _as_list(seeds, int, "seeds")
    _check_numbers(lrs, eps, per_device_train_batch_size, per_device_eval_batch_size, max_seq_length,
                   warmup_ratio, weight_decay, max_train_samples, max_eval_samples, precision)
    task_list = _as_tasks(tasks)
    if overwrite not in (False, True, "changed"):
        raise TaskDataError(f"overwrite={overwrite!r}: choose False, True or 'changed'")
    import torch

    if precision != "fp32" and not torch.cuda.is_available():
        raise TaskDataError(f"precision={precision} needs a CUDA GPU; use precision=fp32 on CPU")
    if devices is not None:
        devices = list(devices)
        bad = [d for d in devices if str(d) != "cpu" and not (isinstance(d, int) and 0 <= d < torch.cuda.device_count())]
        if bad or not devices:
            raise TaskDataError(f"devices={devices}: give CUDA device indices below {torch.cuda.device_count()} "
                                f"(the GPUs visible here) or 'cpu'")

    model = str(model_name_or_path)
    if os.path.isdir(model):
        model = str(Path(model).resolve())
    elif os.path.exists(model):
        raise TaskDataError(f"{model} is a file: pass the model directory")
    name = model_name or Path(str(model_name_or_path).rstrip("/")).name
    if not name or name in (".", "..") or "/" in name:
        raise TaskDataError(f"model_name={name!r}: give a plain name for the results folder and table row")
    if tokenizer_name is not None and os.path.isdir(tokenizer_name):
        tokenizer_name = str(Path(tokenizer_name).resolve())  # the workers may run elsewhere
    tokenizer = load_tokenizer(model, tokenizer_name, cache_dir)
    check_model(model, tokenizer, max_seq_length, cache_dir)

    data, data_dirs = {}, {}
    for task in task_list:  # every task's data is read and checked before any run trains
        d = data_dir.get(task.name) if isinstance(data_dir, dict) else data_dir
        data_dirs[task.name] = str(Path(d).resolve()) if d is not None else None
        data[task.name] = load_task_data(task, d, cache_dir)

    fingerprint = model_fingerprint(model)
    runs, grid = [], list(itertools.product(task_list, lrs, eps, seed_list))
    for i, (task, lr, ep, s) in enumerate(grid, 1):
        settings = RunSettings(
            model_name_or_path=model, task=task.to_dict(), learning_rate=lr, epochs=ep, seed=s,
            tokenizer=tokenizer_name, data_dir=data_dirs[task.name],
            per_device_train_batch_size=per_device_train_batch_size,
            per_device_eval_batch_size=per_device_eval_batch_size, max_seq_length=max_seq_length,
            warmup_ratio=warmup_ratio, weight_decay=weight_decay, max_train_samples=max_train_samples,
            max_eval_samples=max_eval_samples, group_by_length=group_by_length, precision=precision,
            cache_dir=cache_dir, model_fingerprint=fingerprint)
        run = _Run(i, task, settings, Path(output_dir) / name / task.name / run_name(lr, ep, s))
        run.label = f"[{i}/{len(grid)}] {name} {task.name} lr={lr:g} epochs={ep:g} seed={s}"
        runs.append(run)
    _plan(runs, overwrite)

    pending = [r for r in runs if r.status == "pending"]
    for r in runs:
        if r.status == "skipped":
            say(f"{r.label}: finished earlier, skipped ({_scores(r.result)})")
    if devices is None:
        n_gpus = torch.cuda.device_count()
        devices = list(range(n_gpus)) if n_gpus > 1 and len(pending) > 1 else None
    for r in pending:
        if r.run_dir.exists():
            shutil.rmtree(r.run_dir)  # an unfinished run: start it afresh
        r.run_dir.mkdir(parents=True)
        atomic_write_json(r.run_dir / SETTINGS_NAME, r.settings.to_dict())
    if devices:
        _run_workers(pending, devices, say)
    else:
        encoded = {t.name: {} for t in task_list}  # tokenized once per task, shared by its runs
        for r in pending:
            say(f"{r.label}: running")
            t0 = time.time()
            try:
                r.result = run_finetune(r.run_dir, r.settings, data=data[r.task.name], tokenizer=tokenizer,
                                        disable_tqdm=disable_tqdm, encoded=encoded[r.task.name])
                r.status = "finished"
                say(f"{r.label}: {_scores(r.result)} ({time.time() - t0:.0f} s)")
            except KeyboardInterrupt:
                raise
            except Exception as e:
                _record_failure(r, f"{type(e).__name__}: {e}", traceback.format_exc(), say)

    counts = {s: sum(r.status == s for r in runs) for s in ("finished", "skipped", "failed")}
    line = f"{name}: {len(runs)} runs: {counts['finished']} finished, {counts['skipped']} skipped (finished earlier)"
    if counts["failed"]:
        line += f", {counts['failed']} FAILED (see error.txt in their run directories)"
    say(line)
    return [{"task": r.task.name, "learning_rate": r.settings.learning_rate, "epochs": r.settings.epochs,
             "seed": r.settings.seed, "run_dir": str(r.run_dir), "status": r.status,
             "metrics": (r.result or {}).get("metrics"), "error": r.error} for r in runs]


def _plan(runs: list[_Run], overwrite: "bool | str") -> None:
    """Mark finished runs skipped; refuse, before any training, finished runs made with other settings."""
    conflicts = []
    for r in runs:
        done = read_finished(r.run_dir)
        if done is None or overwrite is True:
            continue
        try:
            old = _comparable(json.loads((r.run_dir / SETTINGS_NAME).read_text()))
        except (OSError, ValueError):
            old = None
        if old is not None:
            new = _comparable(r.settings.to_dict())
            diff = [k for k in COMPARED_SETTINGS if old.get(k) != new.get(k)]
            if diff and overwrite == "changed":
                continue  # redone
            if diff:
                conflicts.append(f"{r.run_dir}: " + ", ".join(
                    "another model (its config or weights changed)" if k == "model_fingerprint"
                    else f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in diff[:3]))
                continue
        r.status, r.result = "skipped", done
    if conflicts:
        raise TaskDataError(f"{len(conflicts)} finished run(s) were made with other settings, e.g. {conflicts[0]}; "
                            f"use another output_dir, overwrite='changed' (--redo_changed) to redo those, or "
                            f"overwrite=True (--overwrite) to redo every run")


def _comparable(settings: dict) -> dict:
    """Settings as JSON reads them back (lists, not tuples), without the task's file paths (data may move)."""
    settings = json.loads(json.dumps(settings))
    if isinstance(settings.get("task"), dict):
        settings["task"].pop("files", None)
    return settings


def _run_workers(runs: list[_Run], devices: list, say) -> None:
    """One thread per device; each runs one run at a time in a subprocess pinned to its device."""
    todo: queue.Queue = queue.Queue()
    for r in runs:
        todo.put(r)
    lock = threading.Lock()  # progress lines whole

    def work(device):
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = "" if str(device) == "cpu" else str(device)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
        where = "cpu" if str(device) == "cpu" else f"GPU {device}"
        while True:
            try:
                r = todo.get_nowait()
            except queue.Empty:
                return
            with lock:
                say(f"{r.label}: running on {where}")
            t0 = time.time()
            with open(r.run_dir / "log.txt", "w") as out:
                rc = subprocess.run([sys.executable, "-m", "distill.evaluation.finetune", str(r.run_dir)],
                                    env=env, stdout=out, stderr=subprocess.STDOUT).returncode
            result = read_finished(r.run_dir)
            with lock:
                if rc == 0 and result is not None:
                    r.status, r.result = "finished", result
                    say(f"{r.label}: {_scores(result)} ({time.time() - t0:.0f} s on {where})")
                else:
                    err = r.run_dir / ERROR_NAME
                    detail = err.read_text() if err.is_file() else (r.run_dir / "log.txt").read_text()
                    last = next((ln for ln in reversed(detail.strip().splitlines()) if ln.strip()), f"exit code {rc}")
                    _record_failure(r, last, None, say)

    threads = [threading.Thread(target=work, args=(d,), daemon=True) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _record_failure(r: _Run, message: str, tb: str | None, say) -> None:
    r.status, r.error = "failed", message
    if tb is not None:
        (r.run_dir / ERROR_NAME).write_text(tb)
    say(f"{r.label}: FAILED: {message} (traceback in {r.run_dir / ERROR_NAME}); going on with the other runs")


def _scores(result: dict | None) -> str:
    if not result:
        return "no metrics"
    m = result["metrics"]
    return " ".join(f"{k} {100 * m[k]:.2f}" for k in result.get("metric_keys", m))


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


def _as_tasks(tasks) -> list[Task]:
    items = [tasks] if isinstance(tasks, (str, Task)) else list(tasks)
    if not items:
        raise TaskDataError("no tasks given")
    out = {}
    for t in items:
        task = get_task(t)
        out.setdefault(task.name, task)
    return list(out.values())


def _check_numbers(lrs, eps, train_bs, eval_bs, max_len, warmup, wd, max_train, max_eval, precision) -> None:
    problems = []
    if any(not lr > 0 for lr in lrs):
        problems.append(f"learning_rate={lrs} must be > 0")
    if any(not e > 0 for e in eps):
        problems.append(f"epochs={eps} must be > 0")
    for key, v in (("per_device_train_batch_size", train_bs), ("per_device_eval_batch_size", eval_bs),
                   ("max_seq_length", max_len)):
        if not isinstance(v, int) or v < 1:
            problems.append(f"{key}={v!r} must be a positive integer")
    for key, v in (("max_train_samples", max_train), ("max_eval_samples", max_eval)):
        if v is not None and (not isinstance(v, int) or v < 1):
            problems.append(f"{key}={v!r} must be a positive integer or None (all)")
    if not 0 <= warmup < 1:
        problems.append(f"warmup_ratio={warmup} must be in [0, 1)")
    if wd < 0:
        problems.append(f"weight_decay={wd} must be >= 0")
    if precision not in PRECISIONS:
        problems.append(f"precision={precision!r}: choose among {', '.join(PRECISIONS)}")
    if problems:
        raise TaskDataError("; ".join(problems))
