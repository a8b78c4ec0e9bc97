"""The embedding evaluation command (`distill-evaluate-embeddings`, `python launch/evaluate_embeddings.py`).

    distill-evaluate-embeddings assets/teacher runs/minilm/student --tasks reviews --output_dir results
    distill-evaluate summary results          # the same table as the fine-tuning grid's, with their columns

Each model encodes each task's texts once (frozen, pooled; see `distill.evaluation.embeddings` for the
scores), and the scores go to the fine-tuning grid's results tree:

    OUTPUT_DIR/<model_name>/<task>/embeddings_<pooling>_len<max_seq_length>/
        settings.json   what was scored: the model and its fingerprint, the task, the pooling, the sampling
        metrics.json    {"kind": "embeddings", "metrics": {"cls-acc": ..., ...}, ...}, written last, atomically
        embeddings/<split>.<column>.<key>.npy   the cached embeddings (float32 [n, dim])
    and beside settings.json and each .npy its sha256 (NAME.sha256, `sha256sum` format), written with it

The cache key is a sha256 of the model's fingerprint (its config, tokenizer and weight files, and a
sentence-transformers directory's module folders), the pooling, max_seq_length and the texts, so a
re-run loads the embeddings (the model is not even loaded) and only scores; a changed model or
text selection is encoded again, and so is a cache entry that does not match its checksum (damaged,
edited, half written), with a note naming the file. `EmbeddingEvaluationConfig`'s fields are the command's flags. Every
input is checked before anything is written: exit status 2 and `error: ...` on bad input.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import time
from dataclasses import KW_ONLY, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..cli_args import add_arguments, option
from ..paths import is_no_space, no_space_message, output_dir_problem
from ..shards import atomic_write_json
from .config import CUSTOM_TASK, _as_tasks, same_file
from .embeddings import (
    MTEB_SEED,
    POOLINGS,
    TASK_TYPES,
    EmbeddingData,
    default_types,
    prepare_embedding_data,
    score_embeddings,
    texts_digest,
)
from .finetune import (
    METRICS_NAME,
    SETTINGS_NAME,
    WEIGHT_SUFFIXES,
    check_model,
    checksum_path,
    checksum_problem,
    load_tokenizer,
    model_dir_problem,
    write_checked,
    write_checked_json,
)
from .summary import AGGREGATIONS
from .tasks import TASKS, Task, TaskDataError, custom_task, load_task_data

__all__ = ["EmbeddingEvaluationConfig", "evaluate_embeddings", "embedding_fingerprint", "run_dir_name", "main",
           "parser"]

DEFAULT_TASKS = ("reviews",)
EMBEDDINGS_DIR = "embeddings"
_SAFE = re.compile(r"[^\w.-]")  # characters kept in a cache file's name


@dataclass
class EmbeddingEvaluationConfig:
    """Frozen embeddings of each model scored on each task, the way MTEB scores its task types (no fine-tuning)."""

    models: str | os.PathLike | list[str] = option(
        "model directories: a Hugging Face encoder (with its tokenizer) or a sentence-transformers directory "
        "(modules.json)", positional=True)
    tasks: str | Task | list[str | Task] | None = option(
        f"among {', '.join(TASKS)} (mnli has no embedding score); default reviews (only the custom task when "
        f"--validation_file is given)", default=None)
    output_dir: str | os.PathLike = option(
        "results root, shared with the fine-tuning grid: OUTPUT_DIR/MODEL_NAME/TASK/embeddings_<pooling>_len<L>/",
        default="./evaluation_results")
    _: KW_ONLY
    model_names: list[str] | None = option("the models' rows in the table, one per model; default the directory "
                                           "names", default=None)
    data_dir: str | os.PathLike | None = option(
        "GLUE data (TSV layout or save_to_disk); the reviews parquet or its folder; default the hub / the offline "
        "assets", default=None)
    pooling: str = option("auto: a sentence-transformers directory's own pooling and normalisation, else mean; "
                          "mean: masked mean of the last hidden state; cls: its first token", default="auto",
                          choices=POOLINGS)
    max_seq_length: int = option("texts are truncated to this many tokens", default=128)
    batch_size: int = option("texts per forward pass", default=64)
    device: str | None = option("cpu, cuda, cuda:1, ...; default cuda when available", default=None)
    max_train_samples: int | None = option("classification: draw from a fixed random subset of the train split",
                                           default=None)
    max_eval_samples: int | None = option("score a fixed random subset of the dev split (the grid's subset)",
                                          default=None)
    samples_per_label: int | None = option("classification: train rows per class in each experiment (MTEB's 8); "
                                           "0: one experiment on every train row", default=8)
    n_experiments: int = option("classification: experiments averaged (MTEB's 10)", default=10)
    seed: int = option("seed of the undersampling, the probe and k-means (MTEB's 42)", default=MTEB_SEED)
    progress_bar: bool = option("show progress bars while encoding", default=True)
    aggregation: str = option("for the table printed at the end", default="best", choices=AGGREGATIONS)
    task_name: str = option("its name in the results and the table", default="custom", group=CUSTOM_TASK)
    train_file: str | None = option("CSV, TSV, JSON / JSON lines or parquet; needed for classification only",
                                    default=None, group=CUSTOM_TASK)
    validation_file: str | None = option("the split that is scored, same format", default=None, group=CUSTOM_TASK)
    text_fields: list[str] = option("one column, or two for pairs", default_factory=lambda: ["text"],
                                    group=CUSTOM_TASK)
    label_field: str = option("the label (or score) column", default="label", group=CUSTOM_TASK)
    labels: list[str] | None = option("class names in id order; default: the labels, sorted", default=None,
                                      group=CUSTOM_TASK)
    task_types: list[str] | None = option(
        f"among {' '.join(TASK_TYPES)}; default from the data: one text column -> classification clustering, "
        f"a pair with two classes -> pair_classification, sts for graded scores", default=None, group=CUSTOM_TASK)
    positive_label: str | None = option("pair classification: the class that means similar; default the second "
                                        "label", default=None, group=CUSTOM_TASK)

    def __post_init__(self):
        models = [self.models] if isinstance(self.models, (str, os.PathLike)) else list(self.models)
        self.models = [os.fspath(m) for m in models]
        custom = self.validation_file is not None or self.train_file is not None
        self.tasks = _as_tasks(self.tasks, custom=custom, default=DEFAULT_TASKS if not custom else ())
        if self.samples_per_label == 0:
            self.samples_per_label = None
        problems = [f"{key}={getattr(self, key)!r} must be a positive integer" for key in
                    ("max_seq_length", "batch_size", "n_experiments", "max_train_samples", "max_eval_samples",
                     "samples_per_label")
                    if getattr(self, key) is not None and (not isinstance(getattr(self, key), int)
                                                           or getattr(self, key) < 1)]
        if self.pooling not in POOLINGS:
            problems.append(f"pooling={self.pooling!r}: choose among {', '.join(POOLINGS)}")
        if self.aggregation not in AGGREGATIONS:
            problems.append(f"aggregation={self.aggregation!r}: choose among {', '.join(AGGREGATIONS)}")
        if not self.models:
            problems.append("no models given: name one or more model directories")
        if problems:
            raise TaskDataError("; ".join(problems))
        self.model_names = _model_names(self.models, self.model_names)
        _check_custom_files(self.train_file, self.validation_file)

    def task_list(self) -> list[tuple[Task, tuple[str, ...] | None]]:
        """(task, its types or None for the data's default), the custom task (read and checked) last."""
        out = [(t, None) for t in self.tasks]
        if self.validation_file is not None or self.train_file is not None:
            task = self._custom_task()
            types = tuple(self.task_types) if self.task_types else default_types(task)
            if self.train_file is None:  # the probe would learn from the rows it is scored on
                if "classification" in (self.task_types or ()):
                    raise TaskDataError("custom task: classification trains a probe on --train_file: give one "
                                        "(the --validation_file rows are the ones scored)")
                types = tuple(t for t in types if t != "classification")
            out.append((task, types))
        unique = {}
        for task, types in out:
            unique.setdefault(task.name, (task, types))
        return list(unique.values())

    def _custom_task(self) -> Task:
        sts = "sts" in (self.task_types or ())
        try:
            return custom_task(self.task_name, self.train_file or self.validation_file, self.validation_file,
                               self.text_fields, self.label_field, ("spearman",) if sts else ("accuracy",),
                               None if sts else self.labels)
        except TaskDataError as e:
            raise TaskDataError(f"{e} (name the columns with --text_fields and --label_field; --task_types sts "
                                f"for graded scores)") from None


def _check_custom_files(train_file, validation_file) -> None:
    if train_file is None and validation_file is None:
        return
    if validation_file is None:
        raise TaskDataError("custom task: no --validation_file given: give --validation_file (the split that is "
                            "scored); --train_file is needed for classification only")
    if train_file is not None and same_file(train_file, validation_file):
        raise TaskDataError(f"--train_file and --validation_file are the same file ({train_file}): the probe would "
                            "be scored on the rows it learned from; give a separate file of training rows, or leave "
                            "--train_file out (clustering, pair classification and sts score the --validation_file "
                            "alone)")


def _model_names(models: list[str], names: list[str] | None) -> list[str]:
    if names is not None and len(names) != len(models):
        raise TaskDataError(f"model_names={names}: give one name per model ({len(models)})")
    names = list(names) if names is not None else [Path(m.rstrip("/")).name for m in models]
    bad = [n for n in names if not n or n in (".", "..") or "/" in n]
    if bad:
        raise TaskDataError(f"model name(s) {bad}: give plain names for the results folders (--model_names)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise TaskDataError(f"two models are named {repeated[0]!r}: their results would share a folder; give "
                            f"--model_names, one per model")
    for i, a in enumerate(models):
        twin = next((b for b in models[i + 1:] if same_file(a, b)), None)
        if twin is not None:
            raise TaskDataError(f"models {a} and {twin} are the same directory: give each model once")
    return names


def run_dir_name(pooling: str, max_seq_length: int) -> str:
    """embeddings_st_len128 (sentence-transformers pooling), embeddings_mean_len128, embeddings_cls_len128."""
    return f"embeddings_{pooling}_len{max_seq_length}"


def embedding_fingerprint(model_dir: str | os.PathLike) -> str:
    """sha256 over the names and bytes of a model directory's JSON and weight files (config, tokenizer,
    pooling) and those of a sentence-transformers directory's module folders."""
    root = Path(model_dir)
    folders = [root]
    modules = root / "modules.json"
    if modules.is_file():
        folders += [root / m["path"] for m in json.loads(modules.read_text()) if m.get("path")]
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.is_file() and (path.suffix == ".json" or path.suffix in WEIGHT_SUFFIXES):
                digest.update(f"{path.relative_to(root)}\0".encode())
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
    return digest.hexdigest()


@dataclass
class _Model:
    path: str
    name: str
    pooling: str  # "st" (the directory's own modules), "mean" or "cls"
    transformer_dir: str  # the Hugging Face model for mean / cls pooling


def _check_model(path: str, name: str, config: EmbeddingEvaluationConfig) -> _Model:
    """The model's kind and pooling, after checking its directory, tokenizer and positions (nothing loaded)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        problem = f"model {path} is a file" if root.exists() else f"model {path}: no such directory"
        raise TaskDataError(f"{problem}; give a model directory (save_pretrained, or a sentence-transformers "
                            "directory); download a hub model first")
    transformer = root
    st = (root / "modules.json").is_file()
    if st:
        try:
            modules = json.loads((root / "modules.json").read_text())
            entry = next(m for m in modules if str(m.get("type", "")).endswith("Transformer"))
        except (OSError, ValueError, StopIteration, AttributeError, TypeError) as e:
            raise TaskDataError(f"{root / 'modules.json'}: no Transformer module found ({type(e).__name__}); "
                                f"fix the file, or delete it to use the directory as a Hugging Face model") from None
        transformer = root / entry.get("path", "")
    pooling = "st" if st and config.pooling == "auto" else "mean" if config.pooling == "auto" else config.pooling
    if pooling == "st":
        import importlib.util

        if importlib.util.find_spec("sentence_transformers") is None:
            raise TaskDataError(f"{path} is a sentence-transformers directory but sentence-transformers is not "
                                f"installed: pip install 'distill[embeddings]', or use --pooling mean")
    problem = model_dir_problem(str(transformer))  # no config.json, a run's output directory: named
    if problem:
        raise TaskDataError(problem)
    tokenizer = load_tokenizer(str(transformer))
    check_model(str(transformer), tokenizer, config.max_seq_length)
    return _Model(str(root.resolve()), name, pooling, str(transformer.resolve()))


def _device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise TaskDataError(f"device={device!r}: give cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise TaskDataError(f"device={device!r}: no CUDA GPU is visible here; use --device cpu")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise TaskDataError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def _prepare(config: EmbeddingEvaluationConfig) -> tuple[list[_Model], list[EmbeddingData], str]:
    """Every check (output dir, device, models, tasks and their data) before anything is written."""
    problem = output_dir_problem(config.output_dir, "output_dir")
    if problem:
        raise TaskDataError(problem)
    device = _device(config.device)
    models = [_check_model(m, n, config) for m, n in zip(config.models, config.model_names, strict=True)]
    datas = []
    tasks = [(task, types or default_types(task)) for task, types in config.task_list()]  # before any data is read
    for task, types in tasks:
        data = load_task_data(task, config.data_dir)
        datas.append(prepare_embedding_data(
            task, data, types, max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples,
            samples_per_label=config.samples_per_label, n_experiments=config.n_experiments, seed=config.seed,
            positive_label=config.positive_label if task.source == "files" else None))
    return models, datas, device


def evaluate_embeddings(models: "str | os.PathLike | list | EmbeddingEvaluationConfig", *args,
                        log: Callable[[str], None] | None = None, **kwargs) -> list[dict]:
    """Score every model on every task from frozen embeddings; write the results; return one record per
    (model, task): model, task, run_dir, metrics (fractions), encoded (texts encoded now; 0: all cached), seconds.

    Give an `EmbeddingEvaluationConfig`, or its fields (models, then tasks and output_dir by position or name,
    the others by name). Bad input raises TaskDataError before anything is written.
    """
    if isinstance(models, EmbeddingEvaluationConfig):
        config = replace(models, **kwargs) if kwargs else models
    else:
        config = EmbeddingEvaluationConfig(models, *args, **kwargs)
    say = log or (lambda line: print(line, flush=True))
    checked, datas, device = _prepare(config)
    records = []
    try:
        for model in checked:
            encoder = _LazyEncoder(model, config, device)
            fingerprint = embedding_fingerprint(model.path)
            for data in datas:
                records.append(_evaluate_one(model, fingerprint, data, encoder, config, say))
    except OSError as e:
        if not is_no_space(e):
            raise
        raise TaskDataError(no_space_message(f"the results in {config.output_dir}", e, f"{len(records)} finished "
                                             f"(model, task) result(s) are kept; free space and run again")) from e
    return records


class _LazyEncoder:
    """Loads the model on the first texts that are not in the cache (a fully cached re-run loads nothing)."""

    def __init__(self, model: _Model, config: EmbeddingEvaluationConfig, device: str):
        self.model, self.config, self.device, self._encode = model, config, device, None

    def __call__(self, texts: list[str], desc: str) -> np.ndarray:
        if self._encode is None:
            self._encode = load_encoder(self.model, self.config, self.device)
        return np.asarray(self._encode(texts, desc), dtype=np.float32)


def load_encoder(model: _Model, config: EmbeddingEvaluationConfig, device: str):
    """A function (texts, progress description) -> float32 [n, dim] for the model."""
    from .embeddings import hf_encoder

    if model.pooling == "st":
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(model.path, device=device)
        st.max_seq_length = config.max_seq_length
        return lambda texts, desc: st.encode(texts, batch_size=config.batch_size, convert_to_numpy=True,
                                             show_progress_bar=config.progress_bar)
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.transformer_dir)
    hf = AutoModel.from_pretrained(model.transformer_dir).to(device).eval()
    return lambda texts, desc: hf_encoder(hf, tokenizer, model.pooling, config.batch_size, config.max_seq_length,
                                          device, config.progress_bar, desc)(texts)


def _evaluate_one(model: _Model, fingerprint: str, data: EmbeddingData, encoder: _LazyEncoder,
                  config: EmbeddingEvaluationConfig, say) -> dict:
    """One (model, task): embeddings from the cache or the encoder, the scores, settings.json and metrics.json."""
    run_dir = Path(config.output_dir) / model.name / data.name / run_dir_name(model.pooling, config.max_seq_length)
    label = f"{model.name} {data.name}"
    t0, encoded, embeddings = time.time(), 0, {}
    for key, texts in data.texts.items():
        cache_key = hashlib.sha256(json.dumps([fingerprint, model.pooling, config.max_seq_length,
                                               texts_digest(texts)]).encode()).hexdigest()[:16]
        path = run_dir / EMBEDDINGS_DIR / f"{_SAFE.sub('_', key)}.{cache_key}.npy"
        emb = _load_cached(path, len(texts))
        if emb is None:
            emb = encoder(texts, f"{label} {key}")
            encoded += len(texts)
            _save_cached(path, emb)
        embeddings[key] = emb
    t1 = time.time()
    metrics = score_embeddings(data, embeddings, config.seed)
    seconds = {"encode": round(t1 - t0, 2), "score": round(time.time() - t1, 2)}
    settings = {"model": model.path, "model_name": model.name, "model_fingerprint": fingerprint,
                "pooling": model.pooling, "max_seq_length": config.max_seq_length, "task": data.name,
                "types": list(data.types), "max_train_samples": config.max_train_samples,
                "max_eval_samples": config.max_eval_samples, "samples_per_label": config.samples_per_label,
                "n_experiments": config.n_experiments, "seed": config.seed}
    result = {"kind": "embeddings", **settings, "metrics": metrics, "metric_keys": list(data.metric_keys),
              "main_metrics": list(data.main_keys), "examples": data.examples, "encoded_texts": encoded,
              "seconds": seconds, "device": encoder.device}
    write_checked_json(run_dir / SETTINGS_NAME, settings)
    atomic_write_json(run_dir / METRICS_NAME, result)  # last: a run with metrics.json is complete
    how = f"encoded {encoded} texts" if encoded else "all embeddings cached"
    say(f"{label}: " + " ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items())
        + f" ({how}; {seconds['encode']:.0f} s encoding, {seconds['score']:.1f} s scoring)")
    return {"model": model.name, "task": data.name, "run_dir": str(run_dir), "metrics": metrics, "encoded": encoded,
            "seconds": seconds}


def _load_cached(path: Path, rows: int) -> np.ndarray | None:
    """The cached embeddings at `path`, or None: missing (a note unless simply absent), or not to be trusted (not
    matching their checksum, not a float array of `rows` finite rows): those are encoded again, with a note."""
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
    except OSError as e:
        _note(f"{path} cannot be read ({e.strerror or e}): encoded again")
        return None
    problem = checksum_problem(path, data)
    if problem:
        _note(f"{problem}: encoded again")
        return None
    try:
        emb = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as e:
        _note(f"{path} is not a .npy array ({e}): encoded again")
        return None
    if emb.ndim == 2 and len(emb) == rows and np.isfinite(emb).all():
        return emb
    _note(f"{path} holds shape {emb.shape} (or values that are not finite), not {rows} embeddings: encoded again")
    return None


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


def _save_cached(path: Path, emb: np.ndarray) -> None:
    """Write the embeddings and their checksum atomically (replacing a damaged entry) and drop the older ones of the
    same split and column (another model or text selection), with their checksums."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(emb, dtype=np.float32), allow_pickle=False)
    write_checked(path, buffer.getvalue())
    prefix = path.name.rsplit(".", 2)[0]
    for old in path.parent.glob(f"{prefix}.*.npy"):
        if old != path and old.name.rsplit(".", 2)[0] == prefix:
            old.unlink(missing_ok=True)
            checksum_path(old).unlink(missing_ok=True)


# --------------------------------------------------------------------------- the command
def parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or os.path.basename(sys.argv[0]),
                                description="Score frozen embeddings of each MODEL on each task (logistic-regression "
                                "probe, k-means, cosine), MTEB-style, without fine-tuning; then print the results "
                                "table.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return add_arguments(p, EmbeddingEvaluationConfig)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`distill-evaluate-embeddings MODEL [MODEL ...] [flags]`: 0 done, 2 bad input (`error: ...`, nothing written)."""
    from .cli import SummaryOptions, print_summary

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config = EmbeddingEvaluationConfig(**vars(parser(prog).parse_args(argv)))
        if not config.progress_bar:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        evaluate_embeddings(config)
        print()
        print_summary(SummaryOptions(str(config.output_dir), aggregation=config.aggregation))
    except (TaskDataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
