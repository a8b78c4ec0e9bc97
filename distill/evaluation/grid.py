"""The grid: every (task, learning rate, epochs, seed) of one model, each run in its own directory.

    OUTPUT_DIR/<model_name>/<task>/lr<lr>_ep<epochs>_seed<seed>/{settings.json, metrics.json}

Everything that can be wrong with the input (task names, files, columns, labels, tokenizer,
hyper-parameters, finished runs made with other settings) is checked before the first run
trains. A run whose metrics.json exists is skipped; a run directory without one (an interrupted
or failed run) is cleared and run again. One run failing is reported and the others go on.
settings.json is written with its checksum (settings.json.sha256): a finished run whose settings
file does not match it, or has none, counts as made with other settings (a note names the file).

`evaluate` takes an `EvaluationConfig` (checked on construction) through three steps:
prepare (the devices, model, tokenizer and every task's data, loaded and checked), plan (the
runs, finished ones marked skipped, conflicting ones refused), run (the pending runs); then it
reports the counts and returns one record per run.

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..errors import ConfigTypeError
from ..paths import PACKAGE_PARENT, is_no_space, no_space_message, output_dir_problem
from .config import EvaluationConfig
from .finetune import (
    COMPARED_SETTINGS,
    ERROR_NAME,
    METRICS_NAME,
    SETTINGS_NAME,
    RunSettings,
    check_model,
    checksum_path,
    load_tokenizer,
    model_dir_problem,
    model_fingerprint,
    read_checked_json,
    run_finetune,
    write_checked_json,
)
from .tasks import Task, TaskDataError, load_task_data

__all__ = ["evaluate", "run_name", "read_finished"]



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


def evaluate(model_name_or_path: "str | os.PathLike | EvaluationConfig", *args,
             log: Callable[[str], None] | None = None, **kwargs) -> list[dict]:
    """Fine-tune the model on every task over the grid learning_rate x epochs x seeds.

    Give an `EvaluationConfig`, or its fields: the model, then (by position or name) tasks,
    learning_rate, epochs, seeds, output_dir, then by name only the others (see `EvaluationConfig`):
        model_name_or_path: a Hugging Face model directory (with its tokenizer) or hub name.
        tasks: names from `distill.evaluation.TASKS` (the nine GLUE tasks and "reviews") and/or
            `custom_task(...)` objects; default the eight GLUE tasks other than WNLI.
        learning_rate, epochs, seeds: the grid (one value or a list each).
        output_dir: results root; this model's runs go under OUTPUT_DIR/<model_name>/.
        data_dir: one directory for all tasks, or {task name: directory}.
        devices: run the grid in worker subprocesses, one per entry at a time: CUDA device
            indices, or "cpu". Default: all GPUs when more than one is visible, else in-process.
        overwrite: False: skip finished runs, and refuse (before training) finished runs made with
            other settings or another model; True: redo every run; "changed": redo only those.
    log: where progress lines go (default: print to stdout).

    Returns one record per run: task, learning_rate, epochs, seed, run_dir, status
    ("finished", "skipped" = finished earlier, "failed"), metrics (fractions), error.
    """
    if isinstance(model_name_or_path, EvaluationConfig):
        if args:
            raise ConfigTypeError("evaluate(config, ...): give further settings by name, or in the config")
        config = replace(model_name_or_path, **kwargs) if kwargs else model_name_or_path
    else:
        config = EvaluationConfig(model_name_or_path, *args, **kwargs)
    say = log or (lambda line: print(line, flush=True))
    inputs = _prepare(config)
    runs = _plan(config, inputs)
    try:
        _run(runs, config, inputs, say)
    except OSError as e:
        if not is_no_space(e):
            raise
        done = sum(r.status in ("finished", "skipped") for r in runs)
        raise TaskDataError(no_space_message(
            f"the results in {config.output_dir}", e, f"the {done} finished run(s) are kept (their {METRICS_NAME}); "
            "free space and run the same command again: finished runs are skipped")) from e
    return _report(runs, config.model_name, say)


@dataclass
class _Inputs:
    """What every run of the grid reads, loaded and checked before the first run trains."""

    model: str  # the model directory made absolute (the workers may run elsewhere), or the hub name
    tokenizer_name: str | None
    tokenizer: object
    tasks: list[Task]
    data: dict  # {task name: DatasetDict}
    data_dirs: dict  # {task name: absolute directory or None}
    fingerprint: str | None  # see `model_fingerprint`


def _prepare(config: EvaluationConfig) -> _Inputs:
    """Check the output directory, the devices, the model, its tokenizer and every task's data; nothing is
    trained or written."""
    problem = output_dir_problem(config.output_dir, "output_dir")
    if problem:
        raise TaskDataError(problem)
    _check_devices(config)
    model = config.model_name_or_path
    problem = model_dir_problem(model)  # a local-looking path is named as such, never looked up on the hub
    if problem:
        raise TaskDataError(problem)
    if os.path.isdir(os.path.expanduser(model)):
        model = str(Path(model).expanduser().resolve())
    tokenizer_name = config.tokenizer_name
    if tokenizer_name is not None and os.path.isdir(os.path.expanduser(tokenizer_name)):
        tokenizer_name = str(Path(tokenizer_name).expanduser().resolve())  # the workers may run elsewhere
    tokenizer = load_tokenizer(model, tokenizer_name, config.cache_dir)
    check_model(model, tokenizer, config.max_seq_length, config.cache_dir)
    tasks = config.task_list()
    data, data_dirs = {}, {}
    for task in tasks:  # every task's data is read and checked before any run trains
        d = config.data_dir.get(task.name) if isinstance(config.data_dir, dict) else config.data_dir
        data_dirs[task.name] = str(Path(d).resolve()) if d is not None else None
        data[task.name] = load_task_data(task, d, config.cache_dir)
    return _Inputs(model, tokenizer_name, tokenizer, tasks, data, data_dirs, model_fingerprint(model))


def _check_devices(config: EvaluationConfig) -> None:
    """Mixed precision needs CUDA; devices must be GPUs visible here (or "cpu")."""
    import torch

    if config.precision != "fp32" and not torch.cuda.is_available():
        raise TaskDataError(f"precision={config.precision} needs a CUDA GPU; use precision=fp32 on CPU")
    n_gpus = torch.cuda.device_count()
    if config.devices is not None and any(d != "cpu" and d >= n_gpus for d in config.devices):
        raise TaskDataError(f"devices={config.devices}: give CUDA device indices below {n_gpus} "
                            f"(the GPUs visible here) or 'cpu'")


# RunSettings fields that every run of the grid takes from the config as they are.
SHARED_SETTINGS = ("per_device_train_batch_size", "per_device_eval_batch_size", "max_seq_length", "warmup_ratio",
                   "weight_decay", "max_train_samples", "max_eval_samples", "group_by_length", "precision",
                   "cache_dir")


def _plan(config: EvaluationConfig, inputs: _Inputs) -> list[_Run]:
    """One run per (task, learning rate, epochs, seed); finished ones marked skipped, conflicts refused."""
    shared = {key: getattr(config, key) for key in SHARED_SETTINGS}
    name, runs = config.model_name, []
    grid = list(itertools.product(inputs.tasks, config.learning_rate, config.epochs, config.seeds))
    for i, (task, lr, ep, s) in enumerate(grid, 1):
        settings = RunSettings(
            model_name_or_path=inputs.model, task=task.to_dict(), learning_rate=lr, epochs=ep, seed=s,
            tokenizer=inputs.tokenizer_name, data_dir=inputs.data_dirs[task.name],
            model_fingerprint=inputs.fingerprint, **shared)
        run = _Run(i, task, settings, Path(config.output_dir) / name / task.name / run_name(lr, ep, s))
        run.label = f"[{i}/{len(grid)}] {name} {task.name} lr={lr:g} epochs={ep:g} seed={s}"
        runs.append(run)
    _mark_finished(runs, config.overwrite_mode)
    return runs


def _run(runs: list[_Run], config: EvaluationConfig, inputs: _Inputs, say) -> None:
    """Train the pending runs: in worker processes when devices are given or several GPUs are visible."""
    import torch

    pending = [r for r in runs if r.status == "pending"]
    for r in runs:
        if r.status == "skipped":
            say(f"{r.label}: finished earlier, skipped ({_scores(r.result)})")
    devices = config.devices
    if devices is None:
        n_gpus = torch.cuda.device_count()
        devices = list(range(n_gpus)) if n_gpus > 1 and len(pending) > 1 else None
    for r in pending:
        if r.run_dir.exists():
            shutil.rmtree(r.run_dir)  # an unfinished run: start it afresh
        r.run_dir.mkdir(parents=True)
        write_checked_json(r.run_dir / SETTINGS_NAME, r.settings.to_dict())
    if devices:
        _run_workers(pending, devices, say)
    else:
        _run_in_process(pending, inputs, config.disable_tqdm, say)


def _run_in_process(runs: list[_Run], inputs: _Inputs, disable_tqdm: bool | None, say) -> None:
    encoded = {t.name: {} for t in inputs.tasks}  # tokenized once per task, shared by its runs
    for r in runs:
        say(f"{r.label}: running")
        t0 = time.time()
        try:
            r.result = run_finetune(r.run_dir, r.settings, data=inputs.data[r.task.name], tokenizer=inputs.tokenizer,
                                    disable_tqdm=disable_tqdm, encoded=encoded[r.task.name])
            r.status = "finished"
            say(f"{r.label}: {_scores(r.result)} ({time.time() - t0:.0f} s)")
        except KeyboardInterrupt:
            raise
        except Exception as e:
            if is_no_space(e):
                raise  # every later run would fail the same way: evaluate stops and says so
            _record_failure(r, f"{type(e).__name__}: {e}", traceback.format_exc(), say)


def _report(runs: list[_Run], name: str, say) -> list[dict]:
    """Say the counts; return `evaluate`'s records."""
    counts = {s: sum(r.status == s for r in runs) for s in ("finished", "skipped", "failed")}
    line = f"{name}: {len(runs)} runs: {counts['finished']} finished, {counts['skipped']} skipped (finished earlier)"
    if counts["failed"]:
        line += f", {counts['failed']} FAILED (see error.txt in their run directories)"
    say(line)
    return [{"task": r.task.name, "learning_rate": r.settings.learning_rate, "epochs": r.settings.epochs,
             "seed": r.settings.seed, "run_dir": str(r.run_dir), "status": r.status,
             "metrics": (r.result or {}).get("metrics"), "error": r.error} for r in runs]


def _mark_finished(runs: list[_Run], overwrite: "bool | str") -> None:
    """Mark finished runs skipped; refuse, before any training, finished runs made with other settings.

    A settings.json that does not match its checksum (or cannot be read) says nothing about the run's settings:
    the run counts as made with other settings (refused, or redone with "changed"), with a note. One without a
    checksum file, written by an earlier version, is trusted as written, with a note.
    """
    conflicts = []
    for r in runs:
        done = read_finished(r.run_dir)
        if done is None or overwrite is True:
            continue
        stored, problem = read_checked_json(r.run_dir / SETTINGS_NAME)
        if problem and not checksum_path(r.run_dir / SETTINGS_NAME).exists():  # written before checksums existed
            stored, problem = _legacy_settings(r.run_dir / SETTINGS_NAME), None
        if problem or stored is None:
            problem = problem or f"{r.run_dir / SETTINGS_NAME} cannot be read as JSON"
            print(f"note: {problem}: the run's settings are unknown, so it counts as made with other settings",
                  file=sys.stderr, flush=True)
            diff = [problem]
        else:
            old, new = _comparable(stored), _comparable(r.settings.to_dict())
            diff = ["another model (its config or weights changed)" if k == "model_fingerprint"
                    else f"{k}={old.get(k)!r} (now {new.get(k)!r})"
                    for k in COMPARED_SETTINGS if old.get(k) != new.get(k)]
        if diff and overwrite == "changed":
            continue  # redone
        if diff:
            conflicts.append(f"{r.run_dir}: " + ", ".join(diff[:3]))
            continue
        r.status, r.result = "skipped", done
    if conflicts:
        raise TaskDataError(f"{len(conflicts)} finished run(s) were made with other settings, e.g. {conflicts[0]}; "
                            f"use another output_dir, overwrite='changed' (--redo_changed) to redo those, or "
                            f"overwrite=True (--overwrite) to redo every run")


def _legacy_settings(path: Path) -> dict | None:
    """A settings.json an older version wrote without a checksum: trusted as written, with a note (None: not JSON)."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    print(f"note: {path} has no checksum (written by an earlier version): its settings are trusted as written",
          file=sys.stderr, flush=True)
    return stored if isinstance(stored, dict) else None


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
        # the folder this `distill` was imported from (a checkout or site-packages), for an uninstalled checkout
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT)] + [p for p in [env.get("PYTHONPATH")] if p])
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
