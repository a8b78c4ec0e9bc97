"""Embedding evaluation without fine-tuning: frozen pooled embeddings scored the way MTEB scores its task types.

    from distill.evaluation.embeddings import embedding_task, embedding_scores

    data = embedding_task("reviews", max_eval_samples=500)        # read once (texts, labels, the sampled rows)
    scores = embedding_scores(model, data, tokenizer=tokenizer)    # {"cls-acc": 0.81, "cls-f1": ..., "cluster-v": ...}
    scores = embedding_scores(lambda texts: my_encode(texts), data)  # or any function: texts -> [n, dim] array

Task types and their scores (fractions; tables show x 100):
- classification (one text column, class labels): MTEB's logistic-regression probe. For each of
  `n_experiments` experiments, `samples_per_label` train rows of each class are drawn (MTEB's undersampling:
  the row order is shuffled by `numpy.random.default_rng(seed)` again before each experiment and the first rows
  of each class are kept), `LogisticRegression(max_iter=100, random_state=seed)` is fit on their embeddings and
  predicts the dev split: `cls-acc` (accuracy) and `cls-f1` (macro F1), means over the experiments.
  `samples_per_label=None` fits one probe on every train row instead.
- clustering (one text column, class labels): `MiniBatchKMeans(k, batch_size=500, n_init="auto",
  random_state=seed)` on the dev embeddings, k = the task's number of classes: `cluster-v`, the V-measure of the
  clusters against the labels.
- pair_classification (two text columns, two classes): the cosine similarity of each pair ranks the pairs:
  `pair-ap`, the average precision of the positive class (scikit-learn's `average_precision_score`; MTEB's
  `max_ap` is the best of this over several similarities, cosine among them).
- sts (two text columns, graded scores): `sts-spearman`, the Spearman correlation of cosine and score
  (MTEB's main STS score).

Nothing here reads or writes files except `embedding_task`, which reads the task's data once;
`score_embeddings` and `embedding_scores` only compute (the trainer calls them during training).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .tasks import Task, TaskDataError, get_task

__all__ = ["TASK_TYPES", "TYPE_METRICS", "MAIN_METRICS", "POOLINGS", "EmbeddingData", "default_types",
           "prepare_embedding_data", "embedding_task", "undersample", "classification_scores", "clustering_scores",
           "pair_scores", "sts_scores", "score_embeddings", "hf_encoder", "embedding_scores", "texts_digest"]

CLASSIFICATION, CLUSTERING, PAIR, STS = "classification", "clustering", "pair_classification", "sts"
TASK_TYPES = (CLASSIFICATION, CLUSTERING, PAIR, STS)
TYPE_METRICS = {CLASSIFICATION: ("cls-acc", "cls-f1"), CLUSTERING: ("cluster-v",), PAIR: ("pair-ap",),
                STS: ("sts-spearman",)}
"""The metrics of each task type; the first is the type's main score (its summary column)."""
MAIN_METRICS = {t: keys[0] for t, keys in TYPE_METRICS.items()}
POOLINGS = ("auto", "mean", "cls")
# The class that counts as "similar" in the GLUE pair tasks (the labels' order differs between them).
POSITIVE_LABELS = {"mrpc": "equivalent", "qqp": "duplicate", "rte": "entailment", "qnli": "entailment",
                   "wnli": "entailment"}
MTEB_SEED, MTEB_MAX_ITER, KMEANS_BATCH = 42, 100, 500


@dataclass
class EmbeddingData:
    """One task, ready to encode and score: the texts to embed and what the scores compare them with.

    texts: {"<split>.<column>": texts}; for classification "train.<column>" holds only the train rows that
    some experiment uses. experiments: per experiment, positions in those train rows.
    """

    name: str
    types: tuple[str, ...]
    texts: dict[str, list[str]]
    train_labels: np.ndarray | None = None
    eval_labels: np.ndarray | None = None  # class ids, or graded scores (sts)
    experiments: tuple[np.ndarray, ...] = ()
    n_clusters: int = 0
    positive: int = 1  # pair classification: the label id of "similar"
    eval_split: str = "validation"
    examples: dict[str, int] = field(default_factory=dict)

    @property
    def metric_keys(self) -> tuple[str, ...]:
        return tuple(k for t in self.types for k in TYPE_METRICS[t])

    @property
    def main_keys(self) -> tuple[str, ...]:
        return tuple(MAIN_METRICS[t] for t in self.types)


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


def undersample(labels: np.ndarray, samples_per_label: int | None, n_experiments: int,
                seed: int = MTEB_SEED) -> list[np.ndarray]:
    """MTEB's training rows per experiment: the row order is shuffled by a new `default_rng(seed)` before each
    experiment (so each reshuffles the last), and the first `samples_per_label` rows of each class are kept,
    in that order. None: one experiment with every row."""
    if samples_per_label is None:
        return [np.arange(len(labels))]
    order, out = np.arange(len(labels)), []
    for _ in range(n_experiments):
        np.random.default_rng(seed).shuffle(order)
        counts: dict = {}
        rows = []
        for i in order:
            if counts.get(labels[i], 0) < samples_per_label:
                rows.append(i)
                counts[labels[i]] = counts.get(labels[i], 0) + 1
        out.append(np.asarray(rows, dtype=np.int64))
    return out


def prepare_embedding_data(task: Task, data, types: Sequence[str] | None = None, *,
                           max_train_samples: int | None = None, max_eval_samples: int | None = None,
                           samples_per_label: int | None = 8, n_experiments: int = 10, seed: int = MTEB_SEED,
                           positive_label: str | None = None) -> EmbeddingData:
    """`EmbeddingData` from a task and its DatasetDict (`load_task_data`); TaskDataError when the data cannot be
    scored (a single class, fewer texts than clusters, a pair task without both classes, constant scores)."""
    types = _check_types(task, types) if types else default_types(task)
    split = task.eval_splits[0][0]
    dev = _subset(data[split], max_eval_samples)
    out = EmbeddingData(task.name, types, {}, eval_split=split)
    out.eval_labels = np.asarray(dev["label"])
    out.texts.update({f"{split}.{f}": list(dev[f]) for f in task.text_fields})
    out.examples[split] = len(dev)
    where = f"task {task.name!r}, {split} split ({len(dev)} rows)"
    if CLASSIFICATION in types:
        train = _subset(data["train"], max_train_samples)
        labels = np.asarray(train["label"])
        if len(np.unique(labels)) < 2:
            raise TaskDataError(f"task {task.name!r}, train split: one class only ({task.label_names[labels[0]]!r}); "
                                f"classification needs at least two: give train rows of two or more classes")
        if samples_per_label is not None and (samples_per_label < 1 or n_experiments < 1):
            raise TaskDataError(f"samples_per_label={samples_per_label}, n_experiments={n_experiments}: give "
                                f"positive numbers (samples_per_label None: every train row)")
        experiments = undersample(labels, samples_per_label, n_experiments, seed)
        rows = np.unique(np.concatenate(experiments))  # encode each needed row once
        position = {int(r): i for i, r in enumerate(rows)}
        out.experiments = tuple(np.asarray([position[int(r)] for r in e], dtype=np.int64) for e in experiments)
        out.texts[f"train.{task.text_fields[0]}"] = [train[task.text_fields[0]][int(r)] for r in rows]
        out.train_labels = labels[rows]
        out.examples["train"] = len(rows)
    _check_eval(task, types, out, where, positive_label)
    return out


def _check_eval(task: Task, types, out: EmbeddingData, where: str, positive_label: str | None) -> None:
    labels = out.eval_labels
    if STS in types:
        if np.all(labels == labels[0]):
            raise TaskDataError(f"{where}: every score is {labels[0]}: Spearman needs scores that differ")
        return
    classes = np.unique(labels)
    if len(classes) < 2 and (CLUSTERING in types or PAIR in types or CLASSIFICATION in types):
        raise TaskDataError(f"{where}: one class only ({task.label_names[classes[0]]!r}); scoring needs at least "
                            f"two: give a dev split with two or more classes")
    if CLUSTERING in types:
        out.n_clusters = task.num_labels
        if len(labels) < out.n_clusters:
            raise TaskDataError(f"{where}: {len(labels)} texts for {out.n_clusters} clusters (one per class): "
                                f"clustering needs at least as many texts; give more dev rows (--max_eval_samples) "
                                f"or leave clustering out of the task types")
    if PAIR in types:
        name = positive_label or POSITIVE_LABELS.get(task.name) or task.label_names[1]
        if name not in task.label_names:
            raise TaskDataError(f"positive_label={name!r} is not one of task {task.name!r}'s labels "
                                f"{list(task.label_names)}")
        out.positive = task.label_names.index(name)


def embedding_task(task: "str | Task", data_dir: str | os.PathLike | None = None, types: Sequence[str] | None = None,
                   **kwargs) -> EmbeddingData:
    """`prepare_embedding_data` of a task read with `load_task_data` (a name such as "reviews", or a Task):
    call it once, then `embedding_scores` as often as needed. kwargs: prepare_embedding_data's."""
    from .tasks import load_task_data

    task = get_task(task)
    return prepare_embedding_data(task, load_task_data(task, data_dir), types, **kwargs)


# --------------------------------------------------------------------------- scores
def classification_scores(train_x, train_y, test_x, test_y, experiments: Sequence[np.ndarray] | None = None,
                          seed: int = MTEB_SEED) -> dict[str, float]:
    """Logistic regression on train rows (each experiment's, or all), predicting the test rows:
    {"cls-acc", "cls-f1"}, the means over the experiments."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    experiments = experiments if experiments is not None else [np.arange(len(train_y))]
    acc, f1 = [], []
    for rows in experiments:
        probe = LogisticRegression(max_iter=MTEB_MAX_ITER, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # MTEB's 100 iterations, whatever they reach
            probe.fit(train_x[rows], train_y[rows])
        pred = probe.predict(test_x)
        acc.append(accuracy_score(test_y, pred))
        f1.append(f1_score(test_y, pred, average="macro", zero_division=0))
    return {"cls-acc": float(np.mean(acc)), "cls-f1": float(np.mean(f1))}


def clustering_scores(x, labels, n_clusters: int | None = None, seed: int = MTEB_SEED) -> dict[str, float]:
    """MiniBatchKMeans (batch 500, n_init "auto") with k = n_clusters (default: the distinct labels):
    {"cluster-v"}, the V-measure of the clusters against the labels."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import v_measure_score

    k = n_clusters or len(np.unique(labels))
    clusters = MiniBatchKMeans(n_clusters=k, batch_size=KMEANS_BATCH, n_init="auto", random_state=seed).fit(x)
    return {"cluster-v": float(v_measure_score(labels, clusters.labels_))}


def cosine(a, b) -> np.ndarray:
    """Row-wise cosine similarity of two [n, dim] arrays (float64; a zero vector's similarity is 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(axis=1), norms, out=np.zeros(len(a)), where=norms > 0)


def pair_scores(a, b, labels, positive: int = 1) -> dict[str, float]:
    """{"pair-ap"}: the average precision of label `positive` when the pairs are ranked by cosine similarity."""
    from sklearn.metrics import average_precision_score

    return {"pair-ap": float(average_precision_score(np.asarray(labels) == positive, cosine(a, b)))}


def sts_scores(a, b, scores) -> dict[str, float]:
    """{"sts-spearman"}: Spearman correlation of the pairs' cosine similarity and their scores (0 if undefined)."""
    from .metrics import spearman

    return {"sts-spearman": spearman(np.asarray(scores, dtype=np.float64), cosine(a, b))}


def score_embeddings(data: EmbeddingData, embeddings: dict[str, np.ndarray], seed: int = MTEB_SEED) -> dict[str, float]:
    """Every score of the task's types from its embeddings ({text key: [n, dim] array}, `data.texts`' keys)."""
    missing = [k for k in data.texts if k not in embeddings]
    if missing:
        raise ValueError(f"no embeddings for {missing}")
    split = data.eval_split
    evals = [embeddings[k] for k in data.texts if k.startswith(f"{split}.")]
    out: dict[str, float] = {}
    for t in data.types:
        if t == CLASSIFICATION:
            train = next(embeddings[k] for k in data.texts if k.startswith("train."))
            out.update(classification_scores(train, data.train_labels, evals[0], data.eval_labels,
                                             data.experiments, seed))
        elif t == CLUSTERING:
            out.update(clustering_scores(evals[0], data.eval_labels, data.n_clusters, seed))
        elif t == PAIR:
            out.update(pair_scores(evals[0], evals[1], data.eval_labels, data.positive))
        else:
            out.update(sts_scores(evals[0], evals[1], data.eval_labels))
    return out


# --------------------------------------------------------------------------- encoders
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
        raise ValueError(f"pooling={pooling!r}: choose mean or cls")
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


def embedding_scores(encoder, data: EmbeddingData, *, tokenizer=None, pooling: str = "mean", batch_size: int = 64,
                     max_seq_length: int = 128, device=None, seed: int = MTEB_SEED) -> dict[str, float]:
    """The task's scores for a model: `encoder` is a function texts -> [n, dim] array, or a torch module (a
    Hugging Face encoder, the DeepSpeed engine's `.module`) given with its `tokenizer` and pooled as `hf_encoder`
    does. No file I/O: build `data` once (`embedding_task`) and call this as often as needed."""
    import torch

    if isinstance(encoder, torch.nn.Module):
        if tokenizer is None:
            raise ValueError("embedding_scores(model, ...): give the model's tokenizer too")
        encoder = hf_encoder(encoder, tokenizer, pooling, batch_size, max_seq_length, device)
    embeddings = {}
    for key, texts in data.texts.items():
        emb = np.asarray(encoder(texts), dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(texts):
            raise ValueError(f"the encoder returned shape {emb.shape} for {len(texts)} texts ({key})")
        embeddings[key] = emb
    return score_embeddings(data, embeddings, seed)


def texts_digest(texts: Sequence[str]) -> str:
    """sha256 of the texts, in order (part of the embeddings' cache key)."""
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()
