"""The embedding evaluation command (`distill-evaluate-embeddings`, `python launch/evaluate_embeddings.py`).

    distill-evaluate-embeddings assets/teacher runs/minilm/student --tasks reviews --output_dir results
    distill-evaluate summary results          # the same table as the fine-tuning grid's, with their columns

    distill-evaluate-embeddings MODEL --mteb_tasks Banking77Classification STS12   # MTEB's tasks (hub data)

MTEB does the scoring (`mteb.evaluate`; see `distill.evaluation.embeddings` for the tasks and scores):
each task becomes MTEB tasks, one per type, and the model is given to MTEB behind a caching encoder
(`CachedEncoder`: frozen, pooled; a sentence-transformers directory through MTEB's own wrapper). The
scores go to the fine-tuning grid's results tree:

    OUTPUT_DIR/<model_name>/<task>/embeddings_<pooling>_len<max_seq_length>/
        settings.json   what was scored: the model and its fingerprint, the task, the pooling, the sampling
        metrics.json    {"kind": "embeddings", "metrics": {"cls-acc": ..., ...}, ...}, written last, atomically
        embeddings/<subset>.<split>.<key>.npy   the cached embeddings of one MTEB encode call (float32 [n, dim])
    and beside settings.json and each .npy its sha256 (NAME.sha256, `sha256sum` format), written with it

The cache is this package's, not MTEB's (mteb.evaluate runs with cache=None: MTEB's result cache is keyed
by the model's name, so a retrained model at the same place would get its old scores). The key is a
sha256 of the model's fingerprint (its config, tokenizer and weight files, and a sentence-transformers
directory's module folders), the pooling, max_seq_length, the prompt type and the texts (and the task,
for a sentence-transformers model with prompts), so a re-run loads the embeddings (the model is not even
loaded) and MTEB only scores; a changed model or text selection is encoded again, and so is a cache
entry that does not match its checksum (damaged, edited, half written), with a note naming the file;
entries a finished run did not use are removed. `EmbeddingEvaluationConfig`'s fields are the command's
flags. Every input is checked before anything is written: exit status 2 and `error: ...` on bad input.
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
from ..errors import DistillError
from ..io import atomic_write_json
from ..paths import is_no_space, no_space_message, output_dir_problem
from .config import CUSTOM_TASK, _as_tasks, same_file
from .embeddings import (
    MTEB_SEED,
    POOLINGS,
    TASK_TYPES,
    CosineEncoder,
    EmbeddingData,
    EmbeddingEncoder,
    check_mteb_task,
    default_types,
    mteb_scores,
    mteb_task_data,
    prepare_embedding_data,
    require_mteb,
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
           "parser", "CachedEncoder", "load_encoder"]

DEFAULT_TASKS = ("reviews",)
EMBEDDINGS_DIR = "embeddings"
_SAFE = re.compile(r"[^\w.-]")  # characters kept in a cache file's name


@dataclass
class EmbeddingEvaluationConfig:
    """Frozen embeddings of each model scored by MTEB on each task (no fine-tuning)."""

    models: str | os.PathLike | list[str] = option(
        "model directories: a Hugging Face encoder (with its tokenizer) or a sentence-transformers directory "
        "(modules.json)", positional=True)
    tasks: str | Task | list[str | Task] | None = option(
        f"among {', '.join(TASKS)} (mnli has no embedding score); default reviews (none when --validation_file "
        f"or --mteb_tasks is given)", default=None)
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
    mteb_tasks: list[str] | None = option(
        "MTEB's own tasks by name (text classification, clustering, pair classification, STS), e.g. "
        "Banking77Classification STS12; their data comes from the Hugging Face hub, and they run as MTEB defines "
        "them (its splits, sampling and seed: the flags below are for the other tasks)", default=None)
    max_train_samples: int | None = option("classification: draw from a fixed random subset of the train split",
                                           default=None)
    max_eval_samples: int | None = option("score a fixed random subset of the dev split (the grid's subset)",
                                          default=None)
    samples_per_label: int | None = option("classification: train rows per class in each experiment (MTEB's "
                                           "samples_per_label, 8); 0: one experiment on every train row", default=8)
    n_experiments: int = option("classification: experiments averaged (MTEB's n_experiments, 10)", default=10)
    seed: int = option("the MTEB tasks' seed: undersampling, the probe, k-means (MTEB's 42)", default=MTEB_SEED)
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
        self.mteb_tasks = list(dict.fromkeys(self.mteb_tasks or ()))
        self.tasks = _as_tasks(self.tasks, custom=custom or bool(self.mteb_tasks),
                               default=DEFAULT_TASKS if not (custom or self.mteb_tasks) else ())
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
        require_mteb()
        names = {t.name for t in self.tasks} | ({self.task_name} if custom else set())
        clash = sorted(names & set(self.mteb_tasks))
        if clash:
            raise TaskDataError(f"task {clash[0]!r} is both one of distill's (--tasks, --task_name) and one of MTEB's "
                                f"(--mteb_tasks): their results would share a folder; rename the custom task "
                                f"(--task_name) or leave one out")
        for name in self.mteb_tasks:
            check_mteb_task(name)  # an unknown name or a type without columns: refused before any model is read

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
    datas += [mteb_task_data(name) for name in config.mteb_tasks]  # downloaded now: an unreachable hub is named
    return models, datas, device


def evaluate_embeddings(models: "str | os.PathLike | list | EmbeddingEvaluationConfig", *args,
                        log: Callable[[str], None] | None = None, **kwargs) -> list[dict]:
    """Score every model on every task with MTEB; write the results; return one record per (model, task):
    model, task, run_dir, metrics (fractions), encoded (texts encoded now; 0: all cached), seconds.

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
            encoder = CachedEncoder(model, config, device, embedding_fingerprint(model.path))
            for data in datas:
                records.append(_evaluate_one(model, data, encoder, config, say))
    except OSError as e:
        if not is_no_space(e):
            raise
        raise TaskDataError(no_space_message(f"the results in {config.output_dir}", e, f"{len(records)} finished "
                                             f"(model, task) result(s) are kept; free space and run again")) from e
    return records


class CachedEncoder(CosineEncoder):
    """The MTEB encoder `mteb.evaluate` is given: each encode call's embeddings come from the run's cache, else
    from the model (loaded on the first texts not in the cache: a fully cached re-run loads nothing) and are
    cached. `start(run_dir)` before each (model, task); `prune()` after it drops the entries it did not use."""

    def __init__(self, model: _Model, config: EmbeddingEvaluationConfig, device: str, fingerprint: str):
        self.model, self.config, self.device, self.fingerprint = model, config, device, fingerprint
        self.per_task = model.pooling == "st" and _has_prompts(model.path)  # its prompts may differ per task
        self._inner = None
        self.start(None)

    def start(self, run_dir: Path | None) -> None:
        self.run_dir, self.encoded, self.used = run_dir, 0, set()

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs):
        texts = [text for batch in inputs for text in batch["text"]]
        prompt = getattr(prompt_type, "value", prompt_type)
        key = hashlib.sha256(json.dumps([self.fingerprint, self.model.pooling, self.config.max_seq_length, prompt,
                                         task_metadata.name if self.per_task else None,
                                         texts_digest(texts)]).encode()).hexdigest()[:16]
        path = self.run_dir / EMBEDDINGS_DIR / f"{_SAFE.sub('_', f'{hf_subset}.{hf_split}')}.{key}.npy"
        self.used.add(path.name)
        emb = _load_cached(path, len(texts))
        if emb is None:
            if self._inner is None:
                self._inner = load_encoder(self.model, self.config, self.device)
            emb = self._inner.encode(inputs, task_metadata=task_metadata, hf_split=hf_split, hf_subset=hf_subset,
                                     prompt_type=prompt_type, **kwargs)
            emb = np.asarray(emb.cpu() if hasattr(emb, "cpu") else emb, dtype=np.float32)
            if emb.ndim != 2 or len(emb) != len(texts):
                raise ValueError(f"{self.model.path}: shape {emb.shape} for {len(texts)} texts")
            self.encoded += len(texts)
            _save_cached(path, emb)
        return emb

    def prune(self) -> None:
        """Remove the cache entries (and their checksums) of the run that this (model, task) did not use."""
        for old in (self.run_dir / EMBEDDINGS_DIR).glob("*.npy"):
            if old.name not in self.used:
                old.unlink(missing_ok=True)
                checksum_path(old).unlink(missing_ok=True)


def _has_prompts(model_dir: str) -> bool:
    """Whether a sentence-transformers directory names prompts (config_sentence_transformers.json)."""
    try:
        config = json.loads((Path(model_dir) / "config_sentence_transformers.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("prompts")) and any(config["prompts"].values())


def load_encoder(model: _Model, config: EmbeddingEvaluationConfig, device: str):
    """The model as an MTEB encoder: a sentence-transformers directory through MTEB's own wrapper (its modules,
    prompts), a Hugging Face encoder with mean / cls pooling as `EmbeddingEncoder(hf_encoder(...))`."""
    from .embeddings import hf_encoder

    if model.pooling == "st":
        from mteb.models import SentenceTransformerEncoderWrapper
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(model.path, device=device)
        st.max_seq_length = config.max_seq_length
        return SentenceTransformerEncoderWrapper(st)
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.transformer_dir)
    hf = AutoModel.from_pretrained(model.transformer_dir).to(device).eval()
    return EmbeddingEncoder(hf_encoder(hf, tokenizer, model.pooling, config.batch_size, config.max_seq_length,
                                       device, config.progress_bar, f"{model.name}"))


def _evaluate_one(model: _Model, data: EmbeddingData, encoder: CachedEncoder, config: EmbeddingEvaluationConfig,
                  say) -> dict:
    """One (model, task): MTEB's scores (embeddings from the cache or the model), settings.json and metrics.json."""
    run_dir = Path(config.output_dir) / model.name / data.name / run_dir_name(model.pooling, config.max_seq_length)
    label = f"{model.name} {data.name}"
    t0 = time.time()
    encoder.start(run_dir)
    metrics = mteb_scores(encoder, data, batch_size=config.batch_size, progress=config.progress_bar)
    encoder.prune()
    seconds = {"total": round(time.time() - t0, 2)}
    settings = {"model": model.path, "model_name": model.name, "model_fingerprint": encoder.fingerprint,
                "pooling": model.pooling, "max_seq_length": config.max_seq_length, "task": data.name,
                "mteb_task": data.mteb_name, "types": list(data.types), "max_train_samples": config.max_train_samples,
                "max_eval_samples": config.max_eval_samples, "samples_per_label": data.samples_per_label,
                "n_experiments": data.n_experiments, "seed": data.seed}
    result = {"kind": "embeddings", **settings, "metrics": metrics, "metric_keys": list(data.metric_keys),
              "main_metrics": list(data.main_keys), "examples": data.examples, "encoded_texts": encoder.encoded,
              "seconds": seconds, "device": encoder.device, "mteb_version": _mteb_version()}
    write_checked_json(run_dir / SETTINGS_NAME, settings)
    atomic_write_json(run_dir / METRICS_NAME, result)  # last: a run with metrics.json is complete
    how = f"encoded {encoder.encoded} texts" if encoder.encoded else "all embeddings cached"
    say(f"{label}: " + " ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items())
        + f" (MTEB; {how}; {seconds['total']:.1f} s)")
    return {"model": model.name, "task": data.name, "run_dir": str(run_dir), "metrics": metrics,
            "encoded": encoder.encoded, "seconds": seconds}


def _mteb_version() -> str:
    from importlib.metadata import version

    return version("mteb")


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
    """Write the embeddings and their checksum atomically (replacing a damaged entry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(emb, dtype=np.float32), allow_pickle=False)
    write_checked(path, buffer.getvalue())


# --------------------------------------------------------------------------- the command
def parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or os.path.basename(sys.argv[0]),
                                description="Score frozen embeddings of each MODEL on each task with MTEB "
                                "(mteb.evaluate: its classification probe, clustering, pair classification, STS), "
                                "without fine-tuning; then print the results table.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    except DistillError as e:  # TaskDataError, ...: bad input; a bug is not caught (traceback, exit 1)
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
