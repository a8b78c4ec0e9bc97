"""One fine-tuning run: a model directory, a task, one (learning rate, epochs, seed); the Hugging Face Trainer.

A run lives in its own directory:
    settings.json   what the run is (written first): `RunSettings` as JSON
    settings.json.sha256   its sha256 (`sha256sum` format), written with it (`write_checked`): a settings file
                    that does not match it (edited, truncated, half replaced) or lacks it is never trusted
    metrics.json    written last, atomically, only when the run finished: see `run_finetune`
    error.txt       the traceback of a failed run
    log.txt         the run's output when a grid ran it in a worker process

`python -m distill.evaluation.finetune RUN_DIR` runs the run described by RUN_DIR/settings.json:
that is how the grid puts runs on several GPUs at once.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..io import atomic_write_bytes, atomic_write_json, file_sha256
from .metrics import compute_metrics
from .tasks import Task, TaskDataError, load_task_data

__all__ = ["RunSettings", "run_finetune", "load_tokenizer", "check_model", "model_fingerprint", "COMPARED_SETTINGS",
           "PRECISIONS", "write_checked", "write_checked_json", "checksum_problem", "read_checked_json",
           "model_dir_problem", "looks_local"]

SETTINGS_NAME, METRICS_NAME, ERROR_NAME = "settings.json", "metrics.json", "error.txt"
PRECISIONS = ("fp32", "bf16", "fp16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "vocab.json",
                   "sentencepiece.bpe.model", "tokenizer.model")


CHECKSUM_SUFFIX = ".sha256"


def checksum_path(path: str | os.PathLike) -> Path:
    """Where the checksum of `path` is kept: PATH.sha256."""
    return Path(f"{os.fspath(path)}{CHECKSUM_SUFFIX}")


def write_checked(path: str | os.PathLike, data: bytes) -> str:
    """Write `data` to `path` atomically, then its sha256 (computed while writing) to PATH.sha256, atomically too,
    in `sha256sum`'s format; return the digest. Until both are in place the pair does not match: a reader
    (`checksum_problem`) then recomputes instead of trusting a half-replaced file."""
    digest = atomic_write_bytes(path, [data])
    atomic_write_bytes(checksum_path(path), [f"{digest}  {Path(path).name}\n".encode()])
    return digest


def write_checked_json(path: str | os.PathLike, obj) -> None:
    """`obj` as indented JSON, through `write_checked`."""
    import json

    write_checked(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def checksum_problem(path: str | os.PathLike, data: bytes | None = None) -> str | None:
    """Why `path` (whose bytes are `data`, when already read) cannot be trusted: unreadable, no checksum file, or
    not matching it; None when it matches. The message names the file."""
    path = Path(path)
    try:
        recorded = checksum_path(path).read_text(encoding="ascii").split()[0]
    except FileNotFoundError:
        return f"{path} has no checksum ({checksum_path(path).name} is missing)"
    except (OSError, UnicodeDecodeError, IndexError):
        return f"{path}'s checksum file {checksum_path(path).name} cannot be read"
    try:
        digest = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path)
    except OSError as e:
        return f"{path} cannot be read ({e.strerror or e})"
    return None if digest == recorded else f"{path} does not match its checksum ({checksum_path(path).name})"


def read_checked_json(path: str | os.PathLike) -> tuple[dict | None, str | None]:
    """(the JSON object in `path`, None) when it matches its checksum; (None, why not) otherwise."""
    import json

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return None, f"{path} cannot be read ({e.strerror or e})"
    problem = checksum_problem(path, data)
    if problem:
        return None, problem
    try:
        value = json.loads(data)
    except ValueError as e:
        return None, f"{path} is not JSON ({e})"
    return (value, None) if isinstance(value, dict) else (None, f"{path} does not hold a JSON object")


def looks_local(name: str) -> bool:
    """A path rather than a hub name: it holds a path separator, or starts with ".", "/" or "~"."""
    name = os.fspath(name)
    return name.startswith((".", "/", "~")) or os.sep in name or bool(os.altsep and os.altsep in name)


def model_dir_problem(name: str, what: str = "model") -> str | None:
    """Why `name` cannot be loaded as a model directory, with the fix: a local-looking path that does not exist,
    a file, a directory without config.json (a distillation run's output directory named as such); None for a
    model directory, or a hub name (looked up when loaded)."""
    import json

    path = Path(os.path.expanduser(os.fspath(name)))
    if path.is_dir():
        if (path / "config.json").is_file():
            return None
        if (path / "run_config.json").is_file() or (path / "checkpoints").is_dir():
            try:
                export = json.loads((path / "run_config.json").read_text()).get("export_dir") or path / "student"
            except (OSError, ValueError, AttributeError):
                export = path / "student"
            run = f"{name} is a distillation run's output directory, not a model"
            if (Path(export) / "config.json").is_file():
                return f"{run}: give its exported student, {export}"
            return f"{run}, and has no exported student: export one (distill-export {name} --out DIR), give DIR"
        return (f"{name} has no config.json: give an exported model (a run's OUTPUT_DIR/student, or distill-export "
                "RUN_DIR --out DIR) or a directory saved with save_pretrained")
    if path.exists():
        return f"{what} {name} is a file: give the model directory"
    if looks_local(name):
        return f"{what} {name}: no such directory"
    return None


@dataclass
class RunSettings:
    """Everything one run depends on; saved as settings.json in the run's directory."""

    model_name_or_path: str
    """Model directory or hub name; loaded with AutoModelForSequenceClassification (a new head)."""
    task: dict
    """`Task.to_dict()` of the task."""
    learning_rate: float
    """Peak learning rate of AdamW; linear warmup, then linear decay to 0."""
    epochs: float
    """Passes over the (possibly capped) training split."""
    seed: int
    """Seeds the classifier head's initialisation, dropout and the data order."""
    tokenizer: str | None = None
    """Tokenizer directory or hub name; default the model's."""
    data_dir: str | None = None
    """Where the task's data is (see distill.evaluation.tasks); None: the hub / default assets."""
    per_device_train_batch_size: int = 32
    """Training batch size (one device per run)."""
    per_device_eval_batch_size: int = 64
    """Evaluation batch size."""
    max_seq_length: int = 128
    """Inputs are truncated to this many tokens, then padded per batch."""
    warmup_ratio: float = 0.1
    """Share of the training steps spent warming the learning rate up from 0."""
    weight_decay: float = 0.01
    """AdamW weight decay (not on biases and LayerNorm, as the Trainer does)."""
    max_train_samples: int | None = None
    """Train on a random subset of this many examples (fixed seed 0, the same for every run); None: all."""
    max_eval_samples: int | None = None
    """Evaluate on a random subset of this many examples per eval split (fixed seed 0); None: all."""
    group_by_length: bool = False
    """Batch examples of similar length together (less padding, faster on CPU; a different data order)."""
    precision: str = "fp32"
    """fp32, or bf16 / fp16 mixed precision (CUDA)."""
    cache_dir: str | None = None
    """Hugging Face cache for hub models and datasets."""
    model_fingerprint: str | None = None
    """sha256 over a local model's config and weight files (`model_fingerprint`), so a finished
    run is not mistaken for one of a re-trained model saved at the same place; None for hub names."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# What must agree between a finished run and a new request for the same run directory to count
# as done; paths (model, data, cache) may move.
COMPARED_SETTINGS = ("task", "learning_rate", "epochs", "seed", "per_device_train_batch_size",
                     "per_device_eval_batch_size", "max_seq_length", "warmup_ratio", "weight_decay",
                     "max_train_samples", "max_eval_samples", "group_by_length", "precision", "model_fingerprint")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".h5", ".msgpack")


def model_fingerprint(model_name_or_path: str) -> str | None:
    """sha256 of a local model directory's config.json and weight files (names and contents); None for a hub name."""
    directory = Path(model_name_or_path)
    if not directory.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.is_file() and (path.name == "config.json" or path.suffix in WEIGHT_SUFFIXES):
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
    return digest.hexdigest()


def load_tokenizer(model_name_or_path: str, tokenizer: str | None = None, cache_dir: str | None = None):
    """The tokenizer, or a clear error. A local directory must hold tokenizer files: transformers 5
    otherwise builds an empty tokenizer that maps every word to [UNK] without a word of warning."""
    from transformers import AutoTokenizer

    source = tokenizer or model_name_or_path
    if looks_local(source) and not os.path.exists(os.path.expanduser(source)):
        raise TaskDataError(f"{'tokenizer' if tokenizer else 'model'} {source}: no such directory")
    source = os.path.expanduser(source)
    if os.path.isdir(source) and not any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
        raise TaskDataError(f"no tokenizer in {source} (none of {', '.join(TOKENIZER_FILES)}): save one there "
                            f"(tokenizer.save_pretrained(DIR)) or pass a tokenizer directory / hub name")
    try:
        tok = AutoTokenizer.from_pretrained(source, cache_dir=cache_dir)
    except Exception as e:
        raise TaskDataError(f"could not load a tokenizer from {source}: {type(e).__name__}: {e}") from None
    if len(tok) <= len(tok.all_special_tokens) + 1:
        raise TaskDataError(f"the tokenizer in {source} has a vocabulary of {len(tok)} tokens: it is empty")
    return tok


def check_model(model_name_or_path: str, tokenizer, max_seq_length: int, cache_dir: str | None = None):
    """The model's config, after checking that the tokenizer and max_seq_length fit it."""
    from transformers import AutoConfig

    problem = model_dir_problem(model_name_or_path)
    if problem:
        raise TaskDataError(problem)
    try:
        config = AutoConfig.from_pretrained(os.path.expanduser(model_name_or_path), cache_dir=cache_dir)
    except Exception as e:
        raise TaskDataError(f"could not load a model config from {model_name_or_path}: "
                            f"{type(e).__name__}: {e}") from None
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and max(tok_id for tok_id in tokenizer.get_vocab().values()) >= vocab:
        raise TaskDataError(f"the tokenizer's ids go up to {max(tokenizer.get_vocab().values())} but the model "
                            f"{model_name_or_path} has only {vocab} embeddings: the tokenizer is not this model's")
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max_seq_length > positions:
        raise TaskDataError(f"max_seq_length={max_seq_length} is longer than the model's "
                            f"{positions} positions: use max_seq_length <= {positions}")
    return config


def tokenize_splits(task: Task, data, tokenizer, max_seq_length: int, max_train_samples=None, max_eval_samples=None):
    """{split: tokenized Dataset with input_ids, attention_mask, (token_type_ids), labels}."""
    out = {}
    for split in ["train"] + [s for s, _ in task.eval_splits]:
        ds = data[split]
        cap = max_train_samples if split == "train" else max_eval_samples
        if cap is not None and cap < len(ds):
            ds = ds.shuffle(seed=0).select(range(cap))  # a fixed subset, the same for every run and model

        def encode(batch):
            enc = tokenizer(*[batch[f] for f in task.text_fields], truncation=True, max_length=max_seq_length)
            enc["labels"] = batch["label"]
            return enc

        out[split] = ds.map(encode, batched=True, remove_columns=ds.column_names, keep_in_memory=True)
    return out


def run_finetune(run_dir: str | os.PathLike, settings: RunSettings, data=None, tokenizer=None,
                 disable_tqdm: bool | None = None, encoded: dict | None = None) -> dict:
    """Fine-tune and evaluate one run; write RUN_DIR/metrics.json; return its content.

    metrics.json: {"model", "task", "learning_rate", "epochs", "seed", "metrics": {key: fraction},
    "metric_keys": [...], "score": mean of the metrics (the GLUE per-task score, a fraction),
    "train": {"examples", "steps", "loss", "runtime_s"}, "eval_examples": {split: n}, "device"}.
    `data` (the task's DatasetDict), `tokenizer` and `encoded` (a dict that keeps the tokenized
    splits between runs of one task and settings) may be passed in to skip redoing that work.
    """
    with _quiet_progress_bars(bool(disable_tqdm)):
        return _run(Path(run_dir), settings, data, tokenizer, disable_tqdm, encoded)


@contextlib.contextmanager
def _quiet_progress_bars(quiet: bool):
    """datasets' map bars and transformers' weight-loading bar off while `quiet`, restored after."""
    import datasets.utils.logging as ds_logging
    import transformers.utils.logging as hf_logging

    was = ds_logging.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    if quiet:
        ds_logging.disable_progress_bar()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was[0]:
            ds_logging.enable_progress_bar()
        if quiet and was[1]:
            hf_logging.enable_progress_bar()


def _run(run_dir: Path, settings: RunSettings, data, tokenizer, disable_tqdm, cache: dict | None) -> dict:
    import numpy as np
    import torch
    from transformers import set_seed

    task = Task.from_dict(settings.task)
    start = time.time()
    if tokenizer is None:
        tokenizer = load_tokenizer(settings.model_name_or_path, settings.tokenizer, settings.cache_dir)
    if data is None:
        data = load_task_data(task, settings.data_dir, settings.cache_dir)
    check_model(settings.model_name_or_path, tokenizer, settings.max_seq_length, settings.cache_dir)
    if cache is not None and "splits" in cache:
        encoded = cache["splits"]
    else:
        encoded = tokenize_splits(task, data, tokenizer, settings.max_seq_length,
                                  settings.max_train_samples, settings.max_eval_samples)
        if cache is not None:
            cache["splits"] = encoded

    set_seed(settings.seed)  # before the model: the new classifier head's initialisation depends on it
    cuda = torch.cuda.is_available()
    if settings.precision != "fp32" and not cuda:
        raise TaskDataError(f"precision={settings.precision} needs a CUDA GPU; use precision=fp32 on CPU")
    trainer = _trainer(run_dir, settings, task, tokenizer, encoded["train"], cuda, disable_tqdm)
    train_out = trainer.train()
    metrics, eval_examples = _evaluate_splits(trainer, task, encoded)
    result = {
        "model": settings.model_name_or_path,
        "task": task.name,
        "learning_rate": settings.learning_rate,
        "epochs": settings.epochs,
        "seed": settings.seed,
        "metrics": metrics,
        "metric_keys": list(task.metric_keys),
        "score": float(np.mean([metrics[k] for k in task.metric_keys])),
        "train": {"examples": len(encoded["train"]), "steps": int(train_out.global_step),
                  "loss": float(train_out.training_loss), "runtime_s": round(time.time() - start, 2)},
        "eval_examples": eval_examples,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }
    atomic_write_json(run_dir / METRICS_NAME, result)
    return result


def _trainer(run_dir: Path, settings: RunSettings, task: Task, tokenizer, train_set, cuda: bool, disable_tqdm):
    """The Trainer of a new classification (or regression) head on the model: linear schedule, no checkpoints."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    label_kw = {} if task.is_regression else {
        "id2label": dict(enumerate(task.label_names)), "label2id": {n: i for i, n in enumerate(task.label_names)}}
    model = AutoModelForSequenceClassification.from_pretrained(
        settings.model_name_or_path, num_labels=task.num_labels, cache_dir=settings.cache_dir,
        problem_type="regression" if task.is_regression else "single_label_classification", **label_kw)
    steps_per_epoch = math.ceil(len(train_set) / settings.per_device_train_batch_size)
    total_steps = math.ceil(steps_per_epoch * settings.epochs)
    args = TrainingArguments(
        output_dir=str(run_dir / "trainer"),
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        per_device_eval_batch_size=settings.per_device_eval_batch_size,
        warmup_steps=math.ceil(settings.warmup_ratio * total_steps),  # an int: the same on transformers 4 and 5
        weight_decay=settings.weight_decay,
        lr_scheduler_type="linear",
        **_length_grouping(TrainingArguments, settings.group_by_length),
        seed=settings.seed,
        bf16=settings.precision == "bf16",
        fp16=settings.precision == "fp16",
        use_cpu=not cuda,
        eval_strategy="no",  # one evaluation at the end, on every eval split
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=max(1, total_steps // 10),
        report_to="none",
        disable_tqdm=disable_tqdm,
    )
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if settings.precision != "fp32" else None)
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator,
                      processing_class=tokenizer)
    if args.disable_tqdm:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # it prints every log dict when the bars are off
    return trainer


def _evaluate_splits(trainer, task: Task, encoded: dict) -> tuple[dict, dict]:
    """({metric[_suffix]: fraction} over the task's eval splits, {split: examples})."""
    import numpy as np

    metrics, eval_examples = {}, {}
    for split, suffix in task.eval_splits:
        pred = trainer.predict(encoded[split])
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        preds = logits.reshape(-1) if task.is_regression else np.argmax(logits, axis=-1)
        for name, value in compute_metrics(task.metrics, pred.label_ids, preds).items():
            metrics[f"{name}_{suffix}" if suffix else name] = value
        eval_examples[split] = len(encoded[split])
    return metrics, eval_examples


def _length_grouping(args_cls, on: bool) -> dict:
    """transformers 5: train_sampling_strategy="group_by_length"; 4.x: group_by_length=True."""
    import inspect

    if not on:
        return {}
    params = inspect.signature(args_cls.__init__).parameters
    return {"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in params \
        else {"group_by_length": True}


def main(argv=None) -> int:
    """Worker entry point: run the run described by RUN_DIR/settings.json (checked against its checksum)."""
    import traceback

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m distill.evaluation.finetune RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    stored, problem = read_checked_json(run_dir / SETTINGS_NAME)
    if problem:  # written by the grid just before: a damaged one is not guessed at
        (run_dir / ERROR_NAME).write_text(f"{problem}: run the grid again to rewrite it\n")
        print(f"error: {problem}", file=sys.stderr)
        return 1
    settings = RunSettings.from_dict(stored)
    try:
        run_finetune(run_dir, settings, disable_tqdm=True)
    except Exception:
        (run_dir / ERROR_NAME).write_text(traceback.format_exc())
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
