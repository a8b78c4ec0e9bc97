"""The task metrics, from scikit-learn and scipy.

Every function takes 1-d arrays of references and predictions and returns a float fraction
(accuracy 0.91, MCC 0.52); tables multiply by 100. Where a metric is undefined because one side
is constant (MCC, Pearson, Spearman), has no positives (F1) or there are too few examples, it is
0.0, as scikit-learn's `zero_division=0` and `matthews_corrcoef` give, so a degenerate run ranks
last instead of NaN. scikit-learn and scipy are imported on first use: the task registry imports
this module, and listing tasks or reading results should not pay for them.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..errors import TaskDataError

__all__ = ["METRICS", "METRIC_RANGES", "EMBEDDING_METRIC_RANGES", "EMBEDDING_MAIN_METRICS", "REGRESSION_METRICS",
           "metric_of", "metric_value_problem", "accuracy", "f1", "f1_macro", "mcc", "pearson", "spearman",
           "compute_metrics"]


def accuracy(labels, preds) -> float:
    from sklearn.metrics import accuracy_score

    labels, preds = _pair(labels, preds)
    return float(accuracy_score(labels, preds)) if labels.size else 0.0


def f1(labels, preds) -> float:
    """Binary F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    from sklearn.metrics import f1_score

    labels, preds = _pair(labels, preds)
    # labels=[1] with average="macro": class 1's F1 whichever classes occur (no binary-only check)
    return float(f1_score(labels, preds, labels=[1], average="macro", zero_division=0)) if labels.size else 0.0


def f1_macro(labels, preds) -> float:
    """Unweighted mean of the per-class F1 over the classes present in labels or predictions."""
    from sklearn.metrics import f1_score

    labels, preds = _pair(labels, preds)
    return float(f1_score(labels, preds, average="macro", zero_division=0)) if labels.size else 0.0


def mcc(labels, preds) -> float:
    """Matthews correlation coefficient (multi-class form of Gorodkin 2004; the binary phi for two classes)."""
    from sklearn.metrics import matthews_corrcoef

    labels, preds = _pair(labels, preds)
    return float(matthews_corrcoef(labels, preds)) if labels.size else 0.0


def pearson(labels, preds) -> float:
    from scipy.stats import pearsonr

    labels, preds = _pair(labels, preds, float)
    return _correlation(pearsonr, labels, preds)


def spearman(labels, preds) -> float:
    """Pearson correlation of the ranks, ties sharing their average rank."""
    from scipy.stats import spearmanr

    labels, preds = _pair(labels, preds, float)
    return _correlation(spearmanr, labels, preds)


METRICS: dict[str, Callable] = {
    "accuracy": accuracy, "f1": f1, "f1_macro": f1_macro, "mcc": mcc, "pearson": pearson, "spearman": spearman,
}
REGRESSION_METRICS = frozenset({"pearson", "spearman"})
METRIC_RANGES: dict[str, tuple[float, float]] = {  # the values each metric can take (fractions, not percents)
    "accuracy": (0.0, 1.0), "f1": (0.0, 1.0), "f1_macro": (0.0, 1.0),
    "mcc": (-1.0, 1.0), "pearson": (-1.0, 1.0), "spearman": (-1.0, 1.0),
}


def metric_of(key: str) -> str | None:
    """The metric a result key names ("accuracy_mm": accuracy on the split with suffix "mm"); None: none."""
    if key in METRICS:
        return key
    return next((m for m in sorted(METRICS, key=len, reverse=True) if key.startswith(f"{m}_")), None)


# MTEB's scores (distill.evaluation.embeddings): accuracy and macro F1, v_measure, max_ap, cosine_spearman.
EMBEDDING_METRIC_RANGES: dict[str, tuple[float, float]] = {
    "cls-acc": (0.0, 1.0), "cls-f1": (0.0, 1.0), "cluster-v": (0.0, 1.0), "pair-ap": (0.0, 1.0),
    "sts-spearman": (-1.0, 1.0),
}
EMBEDDING_MAIN_METRICS = ("cls-acc", "cluster-v", "pair-ap", "sts-spearman")  # one per task type


def metric_value_problem(key: str, value, embeddings: bool = False) -> str | None:
    """What is wrong with `value` for result key `key` (an unknown metric, not a number, out of range); None: ok.
    embeddings: the key is an embedding evaluation's (EMBEDDING_METRIC_RANGES)."""
    if embeddings:
        if key not in EMBEDDING_METRIC_RANGES:
            return f"unknown embedding metric {key!r}: the metrics are {', '.join(EMBEDDING_METRIC_RANGES)}"
        name, ranges = key, EMBEDDING_METRIC_RANGES
    else:
        name, ranges = metric_of(key), METRIC_RANGES
        if name is None:
            return f"unknown metric {key!r}: the metrics are {', '.join(sorted(METRICS))} (with _SUFFIX for a split)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"metric {key!r} = {value!r} is not a number"
    low, high = ranges[name]
    if not low <= value <= high:  # NaN too
        return (f"metric {key!r} = {value!r} is outside [{low:g}, {high:g}]; metrics are fractions, as the metric "
                "functions return them (0.52, not 52)")
    return None


def compute_metrics(names, labels, preds) -> dict[str, float]:
    """{name: value} for the named metrics; unknown names raise with the known ones listed."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise TaskDataError(f"unknown metric(s) {unknown}: choose among {sorted(METRICS)}")
    return {n: METRICS[n](labels, preds) for n in names}


# --------------------------------------------------------------------------- helpers
def _pair(labels, preds, dtype=None):
    labels, preds = np.asarray(labels), np.asarray(preds)
    if dtype is not None:
        labels, preds = labels.astype(np.float64), preds.astype(np.float64)
    labels, preds = labels.reshape(-1), preds.reshape(-1)
    if labels.shape != preds.shape:
        raise TaskDataError(f"{labels.size} labels but {preds.size} predictions")
    return labels, preds


def _correlation(correlate, x: np.ndarray, y: np.ndarray) -> float:
    """scipy's coefficient, clipped to [-1, 1]; 0.0 for fewer than two pairs or a constant side (scipy: NaN)."""
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    value = float(correlate(x, y)[0])
    return 0.0 if math.isnan(value) else float(np.clip(value, -1.0, 1.0))
