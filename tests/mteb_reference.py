"""MTEB's own numbers for the tests: tasks built here from a test's rows with mteb's abstract task classes (as mteb's
mock tasks are: a TaskMetadata and `load_data` setting `self.dataset`), scored by `mteb.evaluate` on a
SentenceTransformer, which MTEB wraps itself; nothing of distill.evaluation is used."""
from __future__ import annotations

from pathlib import Path

COLUMNS = {"Classification": {"cls-acc": "accuracy", "cls-f1": "f1"}, "Clustering": {"cluster-v": "v_measure"},
           "PairClassification": {"pair-ap": "max_ap"}, "STS": {"sts-spearman": "cosine_spearman"}}
MAIN = {"Classification": "accuracy", "Clustering": "v_measure", "PairClassification": "max_ap",
        "STS": "cosine_spearman"}


def mteb_task(kind: str, splits: dict[str, dict[str, list]], split: str = "validation", **attrs):
    """An MTEB task of type `kind` whose data is `splits` ({split: {column: values}}, MTEB's column names)."""
    from datasets import Dataset, DatasetDict
    from mteb.abstasks import AbsTaskClassification, AbsTaskClustering, AbsTaskPairClassification, AbsTaskSTS
    from mteb.abstasks.task_metadata import TaskMetadata

    base = {"Classification": AbsTaskClassification, "Clustering": AbsTaskClustering,
            "PairClassification": AbsTaskPairClassification, "STS": AbsTaskSTS}[kind]
    metadata = TaskMetadata(name=f"Test{kind}", description="rows written by a test", type=kind, category="t2t",
                            dataset={"path": "test/rows", "revision": "1"}, modalities=["text"], eval_splits=[split],
                            eval_langs=["eng-Latn"], main_score=MAIN[kind])
    dataset = DatasetDict({name: Dataset.from_dict(columns) for name, columns in splits.items()})

    def load_data(self, num_proc=None, **kwargs):
        self.dataset, self.data_loaded = dataset, True

    return type(f"Test{kind}", (base,), {"metadata": metadata, "load_data": load_data, **attrs})(seed=42)


def mteb_numbers(model, tasks) -> dict[str, float]:
    """{column: value} of `mteb.evaluate(model, tasks)` (no result cache), the columns named as distill names them."""
    import mteb

    result = mteb.evaluate(model, tasks, cache=None, co2_tracker=False, show_progress_bar=False,
                           encode_kwargs={"batch_size": 16, "show_progress_bar": False})
    out = {}
    for task, task_result in zip(tasks, result.task_results, strict=True):
        for column, key in COLUMNS[task.metadata.type].items():
            out[column] = task_result.get_score(getter=lambda scores, k=key: scores[k])
    return out


def mean_pooling_st(model_dir: Path, directory: Path, max_seq_length: int = 32, normalize: bool = False) -> Path:
    """A sentence-transformers directory of `model_dir` with masked-mean pooling (and Normalize if asked)."""
    from sentence_transformers import SentenceTransformer, models

    word = models.Transformer(str(model_dir), max_seq_length=max_seq_length)
    width = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension  # renamed in 6.x
    modules = [word, models.Pooling(width(), "mean")] + ([models.Normalize()] if normalize else [])
    SentenceTransformer(modules=modules, device="cpu").save(str(directory))
    return directory
