"""--eval_steps' in-process scorer (distill.probe.EmbeddingProbe) gives MTEB's numbers: the scores of `mteb.evaluate`
on the same rows and the same embeddings, to 1e-6, on a tiny random BERT; it leaves the global generators as they
were and scores the same student the same way every time."""
from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from conftest import WORDS, save_tiny_teacher
from mteb_reference import mean_pooling_st, mteb_numbers, mteb_task

from distill.config import ConfigError
from distill.probe import EVAL_DEV_FRACTION, EmbeddingProbe

pytest.importorskip("mteb")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny random BERT, and a labelled file of 40 texts in two classes (told apart by their words)."""
    root = tmp_path_factory.mktemp("probe")
    model_dir = save_tiny_teacher(root / "model", tiny_tokenizer_dir, seed=2)
    rng = random.Random(3)
    rows = [{"text": " ".join(rng.choice(words) for _ in range(7)), "label": label}
            for _ in range(20) for label, words in (("a", WORDS[:60]), ("b", WORDS[60:120]))]
    pd.DataFrame(rows).to_csv(root / "eval.csv", index=False)
    return model_dir, root / "eval.csv"


def _reference(model_dir, path, tmp_path) -> dict[str, float]:
    """mteb.evaluate on the probe's rows (its split as documented: a permutation with seed 0, the last 30% dev; one
    probe on every train row), the embeddings from the model with mean pooling as a SentenceTransformer."""
    from sentence_transformers import SentenceTransformer

    table = pd.read_csv(path)
    order = np.random.default_rng(0).permutation(len(table))
    n_dev = max(1, int(len(table) * EVAL_DEV_FRACTION))
    train, dev = table.iloc[order[:-n_dev]], table.iloc[order[-n_dev:]]
    ids = {"a": 0, "b": 1}
    rows = {"train": {"text": train.text.tolist(), "label": train.label.map(ids).tolist()},
            "validation": {"text": dev.text.tolist(), "label": dev.label.map(ids).tolist()}}
    tasks = [mteb_task("Classification", rows, samples_per_label=len(train), n_experiments=1),
             mteb_task("Clustering", {"validation": {"sentences": dev.text.tolist(),
                                                     "labels": dev.label.map(ids).tolist()}},
                       max_fraction_of_documents_to_embed=None, max_documents_per_cluster=len(dev))]
    st = SentenceTransformer(str(mean_pooling_st(model_dir, tmp_path / "st")), device="cpu")
    return mteb_numbers(st, tasks)


def test_the_probe_gives_mteb_evaluate_s_numbers_and_draws_nothing_from_training(tiny, tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    model_dir, path = tiny
    probe = EmbeddingProbe(str(path), AutoTokenizer.from_pretrained(model_dir), pooling="mean", samples=1000,
                           max_seq_len=32, batch_size=16)
    model = AutoModel.from_pretrained(model_dir)
    model.train()
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    scores = probe(model)
    after = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    assert after == (random.random(), np.random.rand(), torch.rand(1).item())  # the generators as they were
    assert model.training
    assert sorted(scores) == ["eval/eval/cls-acc", "eval/eval/cls-f1", "eval/eval/cluster-v", "eval/seconds"]
    got = {k.rsplit("/", 1)[1]: v for k, v in scores.items() if k != "eval/seconds"}
    assert got == pytest.approx(_reference(model_dir, path, tmp_path), abs=1e-6)
    again = probe(model)  # MTEB's tasks are new each time: the same draws, the same numbers
    assert {k: v for k, v in again.items() if k != "eval/seconds"} == {k: v for k, v in scores.items()
                                                                        if k != "eval/seconds"}


def test_eval_steps_without_mteb_is_refused(tiny, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mteb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"--eval_steps: the embedding scores are MTEB's and the mteb package is "
                                          r"not installed: pip install 'distill\[embeddings\]'"):
        EmbeddingProbe(str(tiny[1]), None, pooling="mean", samples=10, max_seq_len=32)
