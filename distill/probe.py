"""--eval_steps: the student's frozen-embedding scores while it trains.

A falling relation loss does not say whether the student is getting better at anything. Every
`--eval_steps` optimizer steps (and at step 0 of a fresh run, where the student is still the slice
of the teacher it started from: the undistilled baseline) the student's pooled embeddings of a
fixed subset of `--eval_task` are scored by MTEB in this process (`mteb.evaluate` on the frozen
student, through `distill.evaluation.embeddings.embedding_scores`: the numbers `mteb.evaluate` gives
for that data, MTEB's classification accuracy and macro F1 with one logistic-regression probe on
every train row, and its clustering V-measure) and logged to TensorBoard as `eval/<task>/<score>`
next to the losses. It needs the mteb package (distill[embeddings]); without it --eval_steps is
refused before training.

It does not change the run: the texts are read and sampled once, before training, with their own
fixed seed; the student runs in eval mode (no dropout) without gradients; MTEB's tasks are built anew
for each scoring (their own generators start from the same seed each time), and the global Python,
numpy and torch generators MTEB seeds are put back as they were, so no random generator of the training
is drawn from and a resumed run stays equal to a straight one. Rank 0 scores; under ZeRO-3, whose
forward gathers the partitioned weights collectively, every other rank runs the same evaluation (the
same forward passes) and drops its scores.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .config import ConfigError

__all__ = ["EmbeddingProbe", "load_probe_data", "EVAL_DEV_FRACTION"]

EVAL_DEV_FRACTION = 0.3
"""Share of a single labelled --eval_task file scored as dev; the rest trains the logistic-regression probe."""


def load_probe_data(task: str, samples: int, data_dir: str | os.PathLike | None = None):
    """The `EmbeddingData` of `--eval_task` (reviews, or a labelled file with `text` and `label` columns), at most
    `samples` dev texts and as many train texts; ConfigError naming the problem and the fix."""
    from .evaluation.embeddings import prepare_embedding_data, require_mteb
    from .evaluation.tasks import TASKS, TaskDataError, custom_task, get_task, load_task_data

    try:
        require_mteb()
    except TaskDataError as e:
        raise ConfigError(f"--eval_steps: {e}") from None
    try:
        if task == "reviews":
            spec = get_task("reviews")
            data = load_task_data(spec, data_dir)
        else:
            path = Path(task)
            if not path.is_file():
                raise TaskDataError(f"{task}: neither 'reviews' nor a file; give reviews or a CSV/JSONL/parquet "
                                    f"file with text and label columns")
            name = path.stem or "eval"
            if name.lower().replace("-", "") in TASKS:  # a file named like a built-in task (reviews.csv)
                name = f"file-{name}"
            spec = custom_task(name, path, path, "text", "label")
            data = _split(load_task_data(spec)["train"])
        return spec, prepare_embedding_data(spec, data, max_train_samples=samples, max_eval_samples=samples,
                                            samples_per_label=None)
    except TaskDataError as e:
        raise ConfigError(f"--eval_task {e}") from None


def _split(table):
    """One labelled table as train and dev: a fixed permutation (seed 0), the last EVAL_DEV_FRACTION as dev."""
    from datasets import DatasetDict

    order = np.random.default_rng(0).permutation(len(table))
    n_dev = max(1, int(len(table) * EVAL_DEV_FRACTION))
    return DatasetDict(train=table.select(order[:-n_dev]), validation=table.select(order[-n_dev:]))


class EmbeddingProbe:
    """Scores of one task's fixed subset for the student module, as TensorBoard scalars.

        probe = EmbeddingProbe(cfg.eval_task, tokenizer, pooling="mean", samples=1000, max_seq_len=128)
        probe(student_module)   # {"eval/reviews/cls-acc": 0.83, ..., "eval/seconds": 2.1}
    """

    def __init__(self, task: str, tokenizer, *, pooling: str, samples: int, max_seq_len: int,
                 batch_size: int = 64, data_dir: str | os.PathLike | None = None):
        self.task, self.data = load_probe_data(task, samples, data_dir)
        self.tokenizer = tokenizer
        self.pooling = pooling if pooling in ("mean", "cls") else "mean"
        self.max_seq_len = max_seq_len
        self.batch_size = batch_size

    def __call__(self, module) -> dict[str, float]:
        from .evaluation.embeddings import embedding_scores

        start = time.perf_counter()
        scores = embedding_scores(module, self.data, tokenizer=self.tokenizer, pooling=self.pooling,
                                  batch_size=self.batch_size, max_seq_length=self.max_seq_len)
        out = {f"eval/{self.task.name}/{k}": v for k, v in scores.items()}
        out["eval/seconds"] = time.perf_counter() - start
        return out

    def encode_only(self, module) -> None:
        """ZeRO-3's ranks other than 0: the same evaluation, so the same forward passes in the same order (they take
        part in the weight gathers); the scores are dropped."""
        self(module)

    @staticmethod
    def line(step: int, scores: dict[str, float]) -> str:
        shown = ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in scores.items() if k != "eval/seconds")
        note = " (the undistilled student)" if step == 0 else ""
        return f"eval step {step}{note}: {shown} in {scores.get('eval/seconds', 0):.1f} s"
