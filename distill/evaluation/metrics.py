"""The task metrics, in plain numpy (the tests check them against scikit-learn and scipy).

Every function takes 1-d arrays of references and predictions and returns a float fraction
(accuracy 0.91, MCC 0.52); tables multiply by 100. Where a metric is undefined because one side
is constant (MCC, Pearson, Spearman) or has no positives (F1), it is 0.0, as scikit-learn's
`zero_division=0` and `matthews_corrcoef` give, so a degenerate run ranks last instead of NaN.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["METRICS", "REGRESSION_METRICS", "accuracy", "f1", "f1_macro", "mcc", "pearson", "spearman",
           "compute_metrics"]


def accuracy(labels, preds) -> float:
    labels, preds = _pair(labels, preds)
    return float(np.mean(labels == preds)) if labels.size else 0.0


def f1(labels, preds) -> float:
    """Binary F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    labels, preds = _pair(labels, preds)
    return _f1_of(labels, preds, 1)


def f1_macro(labels, preds) -> float:
    """Unweighted mean of the per-class F1 over the classes present in labels or predictions."""
    labels, preds = _pair(labels, preds)
    classes = np.union1d(labels, preds)
    return float(np.mean([_f1_of(labels, preds, c) for c in classes])) if classes.size else 0.0


def mcc(labels, preds) -> float:
    """Matthews correlation coefficient (multi-class form of Gorodkin 2004; the binary phi for two classes)."""
    labels, preds = _pair(labels, preds)
    classes, inverse = np.unique(np.concatenate([labels, preds]), return_inverse=True)
    y, p = inverse[: labels.size], inverse[labels.size:]
    k = classes.size
    cm = np.zeros((k, k), dtype=np.float64)  # (true, predicted)
    np.add.at(cm, (y, p), 1.0)
    t, q = cm.sum(axis=1), cm.sum(axis=0)  # true / predicted counts per class
    n, c = cm.sum(), np.trace(cm)
    cov_yp = c * n - t @ q
    cov_yy = n * n - t @ t
    cov_pp = n * n - q @ q
    denom = np.sqrt(cov_yy * cov_pp)
    return float(cov_yp / denom) if denom > 0 else 0.0


def pearson(labels, preds) -> float:
    labels, preds = _pair(labels, preds, float)
    return _corr(labels, preds)


def spearman(labels, preds) -> float:
    """Pearson correlation of the ranks, ties sharing their average rank (scipy's `rankdata` default)."""
    labels, preds = _pair(labels, preds, float)
    return _corr(_rank(labels), _rank(preds))


METRICS: dict[str, Callable] = {
    "accuracy": accuracy, "f1": f1, "f1_macro": f1_macro, "mcc": mcc, "pearson": pearson, "spearman": spearman,
}
REGRESSION_METRICS = frozenset({"pearson", "spearman"})


def compute_metrics(names, labels, preds) -> dict[str, float]:
    """{name: value} for the named metrics; unknown names raise with the known ones listed."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}: choose among {sorted(METRICS)}")
    return {n: METRICS[n](labels, preds) for n in names}


# --------------------------------------------------------------------------- helpers
def _pair(labels, preds, dtype=None):
    labels, preds = np.asarray(labels), np.asarray(preds)
    if dtype is not None:
        labels, preds = labels.astype(np.float64), preds.astype(np.float64)
    labels, preds = labels.reshape(-1), preds.reshape(-1)
    if labels.shape != preds.shape:
        raise ValueError(f"{labels.size} labels but {preds.size} predictions")
    return labels, preds


def _f1_of(labels: np.ndarray, preds: np.ndarray, positive) -> float:
    tp = float(np.sum((labels == positive) & (preds == positive)))
    fp = float(np.sum((labels != positive) & (preds == positive)))
    fn = float(np.sum((labels == positive) & (preds != positive)))
    return 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x @ x) * (y @ y))
    return float(np.clip((x @ y) / denom, -1.0, 1.0)) if denom > 0 else 0.0


def _rank(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties averaged."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # first index of each run of equal values
    ends = np.r_[starts[1:], xs.size]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based positions starts+1 .. ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks
