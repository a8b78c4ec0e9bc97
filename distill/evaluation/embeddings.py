"""Embedding evaluation without fine-tuning: frozen pooled embeddings scored by MTEB itself (the `mteb` package,
`pip install 'distill[embeddings]'`).

    from distill.evaluation.embeddings import embedding_task, embedding_scores

    data = embedding_task("reviews", max_eval_samples=500)        # read once (texts, labels, settings)
    scores = embedding_scores(model, data, tokenizer=tokenizer)    # {"cls-acc": 0.81, "cls-f1": ..., "cluster-v": ...}
    scores = embedding_scores(lambda texts: my_encode(texts), data)  # or any function: texts -> [n, dim] array
    scores = embedding_scores(sentence_transformer, data)          # or a SentenceTransformer / an MTEB encoder

A task (reviews, a GLUE task, your own files) becomes one MTEB task per type, built in memory from its
data (`mteb_tasks`: MTEB's abstract task classes with `load_data` giving the rows), and `mteb.evaluate`
scores them; an MTEB task is also taken by name (`mteb_task_data("Banking77Classification")`, its data
from the Hugging Face hub). The scores are MTEB's own (fractions; tables show x 100):
- classification (one text column, class labels): `AbsTaskClassification`, MTEB's logistic-regression
  probe: for each of `n_experiments` experiments `samples_per_label` train rows of each class (MTEB's
  undersampling, `np.random.RandomState(seed)`), `LogisticRegression(max_iter=100, random_state=seed)`,
  predicting the dev split. `cls-acc` = MTEB's `accuracy`, `cls-f1` = its `f1` (macro), means over the
  experiments. `samples_per_label=None`: one experiment on every train row.
- clustering (one text column, class labels): `AbsTaskClustering` (MTEB's bootstrapped k-means): every
  dev text is embedded; 10 draws (with replacement) of as many texts as the split has (at most MTEB's
  16384: its `max_documents_per_cluster`), each clustered by MiniBatchKMeans (k = the classes in the
  split, random_state=seed): `cluster-v` = MTEB's `v_measure`, their mean.
- pair_classification (two text columns, two classes): `AbsTaskPairClassification`: `pair-ap` = MTEB's
  main score `max_ap`, the best average precision of the positive class when the pairs are ranked by
  cosine similarity, dot product, Euclidean or Manhattan distance.
- sts (two text columns, graded scores): `AbsTaskSTS`: `sts-spearman` = MTEB's `cosine_spearman`.

MTEB seeds Python's, numpy's and torch's global generators when it builds a task or an evaluator;
`mteb_scores` puts them back as they were, so scoring draws nothing from a training run's generators.
Nothing here writes files; `embedding_task` and `mteb_task_data` read the task's data once.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .tasks import Task, TaskDataError, get_task

__all__ = ["TASK_TYPES", "TYPE_METRICS", "MAIN_METRICS", "MTEB_METRICS", "POOLINGS", "EmbeddingData",
           "default_types", "prepare_embedding_data", "embedding_task", "check_mteb_task", "mteb_task_data",
           "mteb_tasks", "mteb_scores", "CosineEncoder", "EmbeddingEncoder", "hf_encoder", "embedding_scores",
           "texts_digest", "require_mteb"]

CLASSIFICATION, CLUSTERING, PAIR, STS = "classification", "clustering", "pair_classification", "sts"
TASK_TYPES = (CLASSIFICATION, CLUSTERING, PAIR, STS)
TYPE_METRICS = {CLASSIFICATION: ("cls-acc", "cls-f1"), CLUSTERING: ("cluster-v",), PAIR: ("pair-ap",),
                STS: ("sts-spearman",)}
"""The metrics of each task type; the first is the type's main score (its summary column)."""
MAIN_METRICS = {t: keys[0] for t, keys in TYPE_METRICS.items()}
MTEB_METRICS = {"cls-acc": "accuracy", "cls-f1": "f1", "cluster-v": "v_measure", "pair-ap": "max_ap",
                "sts-spearman": "cosine_spearman"}
"""Each column's name in MTEB's scores."""
MTEB_TYPES = {"Classification": CLASSIFICATION, "Clustering": CLUSTERING, "PairClassification": PAIR, "STS": STS}
"""MTEB's task types (TaskMetadata.type) that have columns here."""
POOLINGS = ("auto", "mean", "cls")
# The class that counts as "similar" in the GLUE pair tasks (the labels' order differs between them).
POSITIVE_LABELS = {"mrpc": "equivalent", "qqp": "duplicate", "rte": "entailment", "qnli": "entailment",
                   "wnli": "entailment"}
MTEB_SEED = 42
CLUSTER_DRAW = 16384  # MTEB's AbsTaskClustering.max_documents_per_cluster: the most texts one clustering draws


@dataclass
class EmbeddingData:
    """One task, ready for MTEB: its rows per type in MTEB's columns, or an MTEB task's loaded data.

    datasets: {type: DatasetDict} for a task of distill's (classification: train and the eval split, columns
    text/label; clustering: sentences/labels; pair classification: sentence1/sentence2/labels, 1 = similar;
    sts: sentence1/sentence2/score). mteb_name: an MTEB task's name, its data in `mteb_dataset`.
    """

    name: str
    types: tuple[str, ...]
    datasets: dict = field(default_factory=dict)
    eval_split: str = "validation"
    samples_per_label: int | None = 8
    n_experiments: int | None = 10
    seed: int = MTEB_SEED
    examples: dict[str, int] = field(default_factory=dict)
    mteb_name: str | None = None
    mteb_dataset: object = None

    @property
    def metric_keys(self) -> tuple[str, ...]:
        return tuple(k for t in self.types for k in TYPE_METRICS[t])

    @property
    def main_keys(self) -> tuple[str, ...]:
        return tuple(MAIN_METRICS[t] for t in self.types)


def require_mteb() -> None:
    """TaskDataError unless the `mteb` package can be imported."""
    if importlib.util.find_spec("mteb") is None:
        raise TaskDataError("the embedding scores are MTEB's and the mteb package is not installed: pip install "
                            "'distill[embeddings]' (or pip install mteb)")


def default_types(task: Task) -> tuple[str, ...]:
    """The types a task's data allows: one text with classes -> classification and clustering; a pair with
    two classes -> pair classification; a pair with graded scores -> sts."""
    pair = len(task.text_fields) == 2
    if not pair and not task.is_regression:
        return (CLASSIFICATION, CLUSTERING)
    if pair and task.is_regression:
        return (STS,)
    if pair and task.num_labels == 2:
        return (PAIR,)
    if pair:
        raise TaskDataError(f"task {task.name!r}: text pairs with {task.num_labels} classes have no embedding "
                            f"score (pair classification needs two classes, similar or not); leave it out")
    raise TaskDataError(f"task {task.name!r}: one text column with graded scores has no embedding score; use class "
                        f"labels (classification, clustering) or a text pair (sts)")


def _check_types(task: Task, types: Sequence[str]) -> tuple[str, ...]:
    types = tuple(dict.fromkeys(types))
    unknown = [t for t in types if t not in TASK_TYPES]
    if unknown or not types:
        raise TaskDataError(f"task types {list(types)}: choose among {', '.join(TASK_TYPES)}")
    pair, regression = len(task.text_fields) == 2, task.is_regression
    needs = {CLASSIFICATION: (False, False, "one text column and class labels"),
             CLUSTERING: (False, False, "one text column and class labels"),
             PAIR: (True, False, "two text columns and two classes"),
             STS: (True, True, "two text columns and graded scores (metrics pearson/spearman)")}
    for t in types:
        want_pair, want_regression, what = needs[t]
        if (pair, regression) != (want_pair, want_regression) or (t == PAIR and task.num_labels != 2):
            raise TaskDataError(f"task {task.name!r}: type {t} needs {what}; the task has {len(task.text_fields)} "
                                f"text column(s) and {'graded scores' if regression else f'{task.num_labels} classes'}"
                                f" (its types: {', '.join(default_types(task))})")
    return types


def _subset(ds, cap: int | None):
    """The grid's fixed subset: `cap` rows after a shuffle with seed 0 (the same rows for every model)."""
    return ds.shuffle(seed=0).select(range(cap)) if cap is not None and cap < len(ds) else ds


def prepare_embedding_data(task: Task, data, types: Sequence[str] | None = None, *,
                           max_train_samples: int | None = None, max_eval_samples: int | None = None,
                           samples_per_label: int | None = 8, n_experiments: int = 10, seed: int = MTEB_SEED,
                           positive_label: str | None = None) -> EmbeddingData:
    """`EmbeddingData` from a task and its DatasetDict (`load_task_data`); TaskDataError when the data cannot be
    scored (a single class, a pair task without both classes, constant scores)."""
    from datasets import Dataset, DatasetDict

    types = _check_types(task, types) if types else default_types(task)
    if samples_per_label is not None and (samples_per_label < 1 or n_experiments < 1):
        raise TaskDataError(f"samples_per_label={samples_per_label}, n_experiments={n_experiments}: give "
                            f"positive numbers (samples_per_label None: every train row)")
    split = task.eval_splits[0][0]
    dev = _subset(data[split], max_eval_samples)
    out = EmbeddingData(task.name, types, eval_split=split, samples_per_label=samples_per_label,
                        n_experiments=n_experiments, seed=seed, examples={split: len(dev)})
    labels = np.asarray(dev["label"])
    _check_eval(task, types, labels, f"task {task.name!r}, {split} split ({len(dev)} rows)")
    first = list(dev[task.text_fields[0]])
    if CLASSIFICATION in types:
        train = _subset(data["train"], max_train_samples)
        train_labels = np.asarray(train["label"])
        if len(np.unique(train_labels)) < 2:
            raise TaskDataError(f"task {task.name!r}, train split: one class only "
                                f"({task.label_names[train_labels[0]]!r}); classification needs at least two: give "
                                f"train rows of two or more classes")
        out.datasets[CLASSIFICATION] = DatasetDict({
            "train": Dataset.from_dict({"text": list(train[task.text_fields[0]]), "label": train_labels.tolist()}),
            split: Dataset.from_dict({"text": first, "label": labels.tolist()})})
        out.examples["train"] = len(train)
    if CLUSTERING in types:
        out.datasets[CLUSTERING] = DatasetDict({split: Dataset.from_dict({"sentences": first,
                                                                         "labels": labels.tolist()})})
    if PAIR in types:
        name = positive_label or POSITIVE_LABELS.get(task.name) or task.label_names[1]
        if name not in task.label_names:
            raise TaskDataError(f"positive_label={name!r} is not one of task {task.name!r}'s labels "
                                f"{list(task.label_names)}")
        similar = (labels == task.label_names.index(name)).astype(np.int64)
        out.datasets[PAIR] = DatasetDict({split: Dataset.from_dict({
            "sentence1": first, "sentence2": list(dev[task.text_fields[1]]), "labels": similar.tolist()})})
    if STS in types:
        out.datasets[STS] = DatasetDict({split: Dataset.from_dict({
            "sentence1": first, "sentence2": list(dev[task.text_fields[1]]),
            "score": labels.astype(np.float64).tolist()})})
    return out


def _check_eval(task: Task, types, labels: np.ndarray, where: str) -> None:
    if STS in types:
        if np.all(labels == labels[0]):
            raise TaskDataError(f"{where}: every score is {labels[0]}: Spearman needs scores that differ")
        return
    classes = np.unique(labels)
    if len(classes) < 2:
        raise TaskDataError(f"{where}: one class only ({task.label_names[classes[0]]!r}); scoring needs at least "
                            f"two: give a dev split with two or more classes")


def embedding_task(task: "str | Task", data_dir: str | os.PathLike | None = None, types: Sequence[str] | None = None,
                   **kwargs) -> EmbeddingData:
    """`prepare_embedding_data` of a task read with `load_task_data` (a name such as "reviews", or a Task):
    call it once, then `embedding_scores` as often as needed. kwargs: prepare_embedding_data's."""
    from .tasks import load_task_data

    task = get_task(task)
    return prepare_embedding_data(task, load_task_data(task, data_dir), types, **kwargs)


# --------------------------------------------------------------------------- MTEB's own tasks
def check_mteb_task(name: str) -> str:
    """The type of MTEB task `name` (nothing downloaded); TaskDataError for an unknown name or a type without
    columns here (retrieval, reranking, ...: score those with mteb itself)."""
    require_mteb()
    import mteb

    with _global_rng_kept():
        try:
            task = mteb.get_task(name)
        except KeyError as e:
            raise TaskDataError(f"--mteb_tasks {name}: not an MTEB task ({e.args[0] if e.args else e}); give names "
                                f"as mteb.get_tasks() lists them, e.g. Banking77Classification") from None
    kind = MTEB_TYPES.get(task.metadata.type)
    if kind is None or task.metadata.modalities != ["text"]:
        what = task.metadata.type if kind is None else f"{'/'.join(task.metadata.modalities)} {task.metadata.type}"
        raise TaskDataError(f"--mteb_tasks {name}: a {what} task; the scores here are text classification, "
                            f"clustering, pair classification and STS: leave it out (or run it with mteb itself)")
    return kind


def mteb_task_data(name: str) -> EmbeddingData:
    """An MTEB task by name, its data downloaded now (from the Hugging Face hub, or its cache); TaskDataError
    naming the task when the data cannot be had."""
    import mteb
    from datasets.exceptions import DatasetNotFoundError

    kind = check_mteb_task(name)
    with _global_rng_kept():
        task = mteb.get_task(name)
        try:
            task.load_data()
        except (OSError, DatasetNotFoundError) as e:  # ConnectionError (offline, no network) is an OSError
            raise TaskDataError(f"MTEB task {name}: its data could not be downloaded from the Hugging Face hub "
                                f"({type(e).__name__}: {e}); connect to the hub (unset HF_HUB_OFFLINE), or "
                                f"download it once where the hub is reachable (the datasets cache is reused)") from None
    examples = {}
    for subset in task.hf_subsets:
        splits = task.dataset[subset] if subset in task.dataset else task.dataset
        for split in task.eval_splits:
            examples[split] = examples.get(split, 0) + len(splits[split])
    return EmbeddingData(task.metadata.name, (kind,), eval_split=task.eval_splits[0],
                         samples_per_label=getattr(task, "samples_per_label", None),
                         n_experiments=getattr(task, "n_experiments", None), seed=task.seed, examples=examples,
                         mteb_name=task.metadata.name, mteb_dataset=task.dataset)


# --------------------------------------------------------------------------- the MTEB tasks and their scores
_MAIN_SCORES = {CLASSIFICATION: "accuracy", CLUSTERING: "v_measure", PAIR: "max_ap", STS: "cosine_spearman"}


def mteb_tasks(data: EmbeddingData) -> list:
    """New MTEB task objects for `data`, one per type, their data loaded (new each time: MTEB's clustering
    draws from its task's own generator, so a task object scored twice would draw other rows)."""
    import mteb
    from mteb.abstasks import AbsTaskClassification, AbsTaskClustering, AbsTaskPairClassification, AbsTaskSTS
    from mteb.abstasks.task_metadata import TaskMetadata

    if data.mteb_name is not None:
        task = mteb.get_task(data.mteb_name)
        task.dataset, task.data_loaded = data.mteb_dataset, True
        return [task]
    bases = {CLASSIFICATION: (AbsTaskClassification, "Classification"), CLUSTERING: (AbsTaskClustering, "Clustering"),
             PAIR: (AbsTaskPairClassification, "PairClassification"), STS: (AbsTaskSTS, "STS")}
    tasks = []
    for kind in data.types:
        base, mteb_type = bases[kind]
        metadata = TaskMetadata(
            name=f"{data.name}.{kind}", description=f"distill task {data.name!r}, {kind}, from local data",
            dataset={"path": f"local/{data.name}", "revision": "local"}, type=mteb_type, category="t2t",
            modalities=["text"], eval_splits=[data.eval_split], eval_langs=["und-Latn"],
            main_score=_MAIN_SCORES[kind])
        dataset = data.datasets[kind]
        attrs = {"metadata": metadata, "load_data": _loader(dataset)}
        if kind == CLASSIFICATION:
            every = data.samples_per_label is None  # one experiment on every train row
            attrs.update(samples_per_label=len(dataset["train"]) if every else data.samples_per_label,
                         n_experiments=1 if every else data.n_experiments)
        elif kind == CLUSTERING:  # every dev text embedded (max_eval_samples caps them); draws of as many texts
            attrs.update(max_fraction_of_documents_to_embed=None,
                         max_documents_per_cluster=min(len(dataset[data.eval_split]), CLUSTER_DRAW))
        elif kind == STS:
            scores = dataset[data.eval_split]["score"]
            attrs.update(min_score=min(scores), max_score=max(scores))
        task = type(f"Distill{mteb_type}", (base,), attrs)(seed=data.seed)
        task.load_data()
        tasks.append(task)
    return tasks


def _loader(dataset):
    def load_data(self, num_proc=None, **kwargs) -> None:
        self.dataset, self.data_loaded = dataset, True
    return load_data


@contextlib.contextmanager
def _global_rng_kept():
    """Python's, numpy's and torch's global generators as they were before the block (MTEB seeds them)."""
    import random

    import torch

    state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.random.set_rng_state(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def mteb_scores(model, data: EmbeddingData, *, batch_size: int = 64, progress: bool = False) -> dict[str, float]:
    """`mteb.evaluate` of `model` (an MTEB encoder, or a SentenceTransformer) on the task's MTEB tasks, no
    result cache: {column: MTEB's value}, each the mean over the task's splits and subsets as MTEB takes it."""
    import mteb
    from sklearn.exceptions import ConvergenceWarning

    with _global_rng_kept(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # MTEB's 100 iterations, whatever they reach
        tasks = mteb_tasks(data)
        result = mteb.evaluate(model, tasks, cache=None, co2_tracker=False, overwrite_strategy="always",
                               show_progress_bar=progress,
                               encode_kwargs={"batch_size": batch_size, "show_progress_bar": progress})
    out: dict[str, float] = {}
    for kind, task_result in zip(data.types, result.task_results, strict=True):
        for key in TYPE_METRICS[kind]:
            out[key] = float(task_result.get_score(getter=lambda scores, k=MTEB_METRICS[key]: scores[k]))
    return out


# --------------------------------------------------------------------------- encoders
class CosineEncoder:
    """What an MTEB encoder (mteb's `EncoderProtocol`) has besides `encode`: cosine similarity and empty model
    metadata (MTEB's max_ap also ranks by dot product and distances, so pair-ap does not depend on it)."""

    def similarity(self, embeddings1, embeddings2):
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)

    @property
    def mteb_model_meta(self):
        from mteb.models.model_meta import ModelMeta

        return ModelMeta.create_empty()


class EmbeddingEncoder(CosineEncoder):
    """An MTEB encoder from a function texts -> [n, dim] array: each `encode` call takes every text of MTEB's
    data loader and encodes them in one call."""

    def __init__(self, encode_texts: Callable[[list[str]], np.ndarray]):
        self.encode_texts = encode_texts

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs):
        texts = [text for batch in inputs for text in batch["text"]]
        emb = np.asarray(self.encode_texts(texts), dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(texts):
            raise TaskDataError(f"the encoder returned shape {emb.shape} for {len(texts)} texts "
                                f"({task_metadata.name}, {hf_split})")
        return emb


def _accepted_inputs(model) -> Callable[[str], bool]:
    """Which tokenizer outputs the model's forward takes (a tokenizer may give token_type_ids to a model without)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return lambda name: True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return lambda name: True
    return lambda name: name in params


def hf_encoder(model, tokenizer, pooling: str = "mean", batch_size: int = 64, max_seq_length: int = 128,
               device=None, progress: bool = False, desc: str | None = None) -> Callable[[list[str]], np.ndarray]:
    """A function texts -> float32 [n, dim]: `model`'s last hidden state, pooled (masked mean, or the first
    token for "cls"). Texts go longest first in batches of `batch_size`, truncated to `max_seq_length` tokens,
    padded per batch. The model is put in eval mode for the call and back to its mode after; no gradients."""
    import torch

    from ..embedding_loss import pool

    if pooling not in ("mean", "cls"):
        raise TaskDataError(f"pooling={pooling!r}: choose mean or cls")
    accepts = _accepted_inputs(model)

    def encode(texts: list[str]) -> np.ndarray:
        from tqdm.auto import tqdm

        where = device or next(model.parameters()).device
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = [None] * len(texts)
        was_training = model.training
        model.eval()
        try:
            starts = range(0, len(texts), batch_size)
            for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
                rows = order[start:start + batch_size]
                enc = tokenizer([texts[i] for i in rows], truncation=True, max_length=max_seq_length, padding=True,
                                return_tensors="pt").to(where)
                with torch.inference_mode():
                    hidden = model(**{k: v for k, v in enc.items() if accepts(k)})[0]
                pooled = pool(hidden.float(), enc["attention_mask"], pooling).cpu().numpy()
                for i, row in zip(rows, pooled, strict=True):
                    out[i] = row
        finally:
            model.train(was_training)
        return np.stack(out).astype(np.float32) if out else np.zeros((0, 0), dtype=np.float32)

    return encode


def _is_sentence_transformer(model) -> bool:
    return type(model).__module__.startswith("sentence_transformers")


def embedding_scores(encoder, data: EmbeddingData, *, tokenizer=None, pooling: str = "mean", batch_size: int = 64,
                     max_seq_length: int = 128, device=None) -> dict[str, float]:
    """The task's MTEB scores for a model: `encoder` is a SentenceTransformer or an MTEB encoder (given to
    `mteb.evaluate` as it is), a function texts -> [n, dim] array, or a torch module (a Hugging Face encoder,
    the DeepSpeed engine's `.module`) given with its `tokenizer` and pooled as `hf_encoder` does. No file I/O:
    build `data` once (`embedding_task`) and call this as often as needed."""
    import torch

    require_mteb()
    if _is_sentence_transformer(encoder) or hasattr(encoder, "mteb_model_meta"):
        model = encoder
    elif isinstance(encoder, torch.nn.Module):
        if tokenizer is None:
            raise TaskDataError("embedding_scores(model, ...): give the model's tokenizer too")
        model = EmbeddingEncoder(hf_encoder(encoder, tokenizer, pooling, batch_size, max_seq_length, device))
    else:
        model = EmbeddingEncoder(encoder)
    return mteb_scores(model, data, batch_size=batch_size)


def texts_digest(texts: Sequence[str]) -> str:
    """sha256 of the texts, in order (part of the embeddings' cache key)."""
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()
