"""distill.evaluation: metrics, task loaders, the grid (runs, skips, failures, workers), the summary table, the CLI."""
from __future__ import annotations

import importlib.util
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, WORDS
from unwritable import assert_unwritable_outputs_refused

from distill.evaluation import cli
from distill.evaluation import metrics as M
from distill.evaluation.config import EvaluationConfig
from distill.evaluation.grid import evaluate
from distill.evaluation.summary import create_summary_table, markdown_table, summarize
from distill.evaluation.tasks import (
    DEFAULT_TASKS,
    GLUE_TASKS,
    TaskDataError,
    custom_task,
    get_task,
    load_reviews,
    load_task_data,
)


def _load_script():
    """launch/evaluate_glue.py as a module: the thin entry point must hand over to the package's command."""
    spec = importlib.util.spec_from_file_location("evaluate_glue_cli", REPO / "launch" / "evaluate_glue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A 2-layer, 32-wide BERT saved with the tiny tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    directory = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_task_files(tmp_path_factory) -> tuple[Path, Path]:
    """A sentiment-like CSV task: label 1 when the sentence holds "good", else 0."""
    directory = tmp_path_factory.mktemp("tiny_task")
    rng = random.Random(0)
    paths = []
    for split, n in (("train", 48), ("dev", 24)):
        rows = []
        for i in range(n):
            words = rng.sample(WORDS, 6)
            label = i % 2
            if label:
                words[rng.randrange(6)] = "good"
            elif "good" in words:
                words.remove("good")
            rows.append({"sentence": " ".join(words), "label": label})
        path = directory / f"{split}.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        paths.append(path)
    return paths[0], paths[1]


TINY = dict(learning_rate=[5e-4], epochs=[1], per_device_train_batch_size=8, per_device_eval_batch_size=16,
            max_seq_length=16, disable_tqdm=True)


# --------------------------------------------------------------------------- metrics
def test_metrics_match_sklearn_and_scipy():
    from scipy import stats
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    y3, p3 = rng.integers(0, 3, 150), rng.integers(0, 3, 150)
    assert M.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
    assert M.f1(y, p) == pytest.approx(skm.f1_score(y, p))
    assert M.f1_macro(y3, p3) == pytest.approx(skm.f1_score(y3, p3, average="macro"))
    assert M.mcc(y, p) == pytest.approx(skm.matthews_corrcoef(y, p))
    assert M.mcc(y3, p3) == pytest.approx(skm.matthews_corrcoef(y3, p3))
    # a correlated case too, so MCC is far from 0
    q = np.where(rng.random(200) < 0.8, y, 1 - y)
    assert M.mcc(y, q) == pytest.approx(skm.matthews_corrcoef(y, q)) and M.mcc(y, q) > 0.4
    # degenerate: constant predictions -> 0, as sklearn
    assert M.mcc(y, np.ones_like(y)) == skm.matthews_corrcoef(y, np.ones_like(y)) == 0.0
    assert M.f1(y, np.zeros_like(y)) == skm.f1_score(y, np.zeros_like(y), zero_division=0) == 0.0

    a = rng.normal(size=100)
    b = a + rng.normal(scale=0.7, size=100)
    ties_a, ties_b = np.round(a * 2) / 2, np.round(b)  # many ties: average ranks
    assert M.pearson(a, b) == pytest.approx(stats.pearsonr(a, b)[0])
    assert M.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0])
    assert M.spearman(ties_a, ties_b) == pytest.approx(stats.spearmanr(ties_a, ties_b)[0])
    assert M.pearson(a, np.full(100, 2.0)) == 0.0
    with pytest.raises(ValueError, match="unknown metric"):
        M.compute_metrics(["bleu"], y, p)


def test_metrics_on_hand_computed_examples():
    # binary: TP 2, TN 2, FP 0, FN 1
    y, p = [0, 1, 1, 0, 1], [0, 1, 0, 0, 1]
    assert M.accuracy(y, p) == pytest.approx(4 / 5)
    assert M.f1(y, p) == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert M.f1_macro(y, p) == pytest.approx((4 / 5 + 4 / 5) / 2)  # class 0: TP 2, FP 1, FN 0
    assert M.mcc(y, p) == pytest.approx((2 * 2 - 0 * 1) / np.sqrt((2 + 0) * (2 + 1) * (2 + 0) * (2 + 1)))
    # three classes: confusion (true x predicted) [[1,0,0],[0,0,1],[0,1,1]]
    y3, p3 = [0, 1, 2, 2], [0, 2, 2, 1]
    assert M.accuracy(y3, p3) == pytest.approx(0.5)
    assert M.f1(y3, p3) == 0.0  # class 1 is never predicted right
    assert M.f1_macro(y3, p3) == pytest.approx((1 + 0 + 2 / 4) / 3)
    assert M.mcc(y3, p3) == pytest.approx((2 * 4 - 6) / (16 - 6))  # (c n - t.q) / sqrt((n^2 - t.t)(n^2 - q.q))
    # correlations: r = 3 / sqrt(2 * 14/3); Spearman with x's tie at average rank 2.5: 4.5 / sqrt(4.5 * 5)
    assert M.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(np.sqrt(27 / 28))
    assert M.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(np.sqrt(0.9))
    assert M.compute_metrics(["accuracy", "mcc"], y, p) == {"accuracy": M.accuracy(y, p), "mcc": M.mcc(y, p)}
    # undefined -> 0.0: no examples, one pair, a constant side, no positives anywhere
    for name, metric in M.METRICS.items():
        assert metric([], []) == 0.0, name
    assert M.pearson([1.0], [2.0]) == M.spearman([1.0], [2.0]) == 0.0
    assert M.spearman([1, 2, 3], [5, 5, 5]) == 0.0 and M.mcc([0, 1, 1], [1, 1, 1]) == 0.0
    assert M.f1([0, 0], [0, 0]) == 0.0 and M.f1([0, 2, 2], [2, 0, 2]) == 0.0  # labels without class 1
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        M.accuracy([0, 1, 1], [0, 1])


# --------------------------------------------------------------------------- summary table
def _write_result(root: Path, model: str, task: str, lr: float, ep: int, seed: int, metrics: dict) -> None:
    d = root / model / task / f"lr{lr:g}_ep{ep}_seed{seed}"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"learning_rate": lr, "epochs": ep, "seed": seed, "metrics": metrics}))


def test_summary_table_from_hand_written_results(tmp_path):
    root = tmp_path / "results"
    for lr, mcc in ((1e-5, 0.5), (3e-5, 0.3), (5e-5, -0.1)):
        _write_result(root, "student", "cola", lr, 3, 42, {"mcc": mcc})
    _write_result(root, "student", "mrpc", 1e-5, 3, 42, {"f1": 0.90, "accuracy": 0.80})
    _write_result(root, "student", "mrpc", 3e-5, 3, 42, {"f1": 0.80, "accuracy": 0.86})
    _write_result(root, "student", "mnli", 3e-5, 3, 42, {"accuracy_m": 0.80, "accuracy_mm": 0.82})
    _write_result(root, "teacher", "cola", 1e-5, 5, 1, {"mcc": 0.6})
    _write_result(root, "teacher", "mrpc", 1e-5, 5, 1, {"f1": 0.92, "accuracy": 0.88})
    (root / "student" / "cola" / "unfinished_run").mkdir()  # no metrics.json: ignored

    best = create_summary_table(root)
    assert list(best.columns) == ["cola", "mrpc", "mnli", "avg"]  # GLUE order, then the average
    assert list(best.index) == ["student", "teacher"]
    assert best.loc["student", "cola"] == 50.0  # 100 x MCC, never (MCC + 1) x 50
    assert best.loc["student", "mrpc"] == 85.0  # (F1 + accuracy) / 2 of the better run (85 vs 83)
    assert best.loc["student", "mnli"] == 81.0
    assert best.loc["student", "avg"] == pytest.approx((50 + 85 + 81) / 3, abs=0.01)
    assert np.isnan(best.loc["teacher", "mnli"]) and np.isnan(best.loc["teacher", "avg"])  # missing task
    hp = best.attrs["hyperparameters"]
    assert hp.loc["student", "cola"] == "lr=1e-05 epochs=3 seed=42"
    assert hp.loc["student", "mrpc"] == "lr=1e-05 epochs=3 seed=42"
    saved = pd.read_csv(root / "summary.csv", index_col=0)
    assert saved.loc["student", "cola"] == 50.0
    assert (root / "summary_hyperparameters.csv").is_file()

    mean = create_summary_table(root, aggregation="mean", save=False)
    assert mean.loc["student", "cola"] == pytest.approx(100 * (0.5 + 0.3 - 0.1) / 3, abs=0.01)
    assert mean.loc["student", "mrpc"] == pytest.approx(84.0)
    assert "mean of 3 runs" in mean.attrs["hyperparameters"].loc["student", "cola"]
    median = create_summary_table(root, aggregation="median", save=False)
    assert median.loc["student", "cola"] == 30.0

    every = summarize(root, metrics="all", models=["teacher", "student"])
    assert list(every.scores.index) == ["teacher", "student"]
    assert every.scores.loc["student", "mrpc/f1"] == pytest.approx(90.0)  # the best run's own metrics
    assert every.scores.loc["student", "mnli/accuracy_mm"] == pytest.approx(82.0)
    assert every.scores.loc["student", "avg"] == pytest.approx(best.loc["student", "avg"], abs=0.01)
    md = markdown_table(best)
    assert md.splitlines()[0] == "| model | cola | mrpc | mnli | avg |"
    assert "| student | 50.00 | 85.00 | 81.00 | 72.00 |" in md and "| teacher | 60.00 | 90.00 | - | - |" in md

    with pytest.raises(TaskDataError, match="aggregation"):
        create_summary_table(root, aggregation="max")
    _write_result(root, "broken", "cola", 1e-5, 3, 42, {"accuracy": 0.5})
    with pytest.raises(TaskDataError, match=r"needs metric\(s\) \['mcc'\]"):
        create_summary_table(root)


@pytest.mark.parametrize("metrics, message", [
    ({"mcc": 2.95}, "metric 'mcc' = 2.95 is outside [-1, 1]"),
    ({"mcc": 0.5, "acuracy": 0.9}, "unknown metric 'acuracy'"),
    ({"mcc": float("nan")}, "metric 'mcc' = nan is outside [-1, 1]"),
    ({"mcc": True}, "metric 'mcc' = True is not a number"),
    ({"mcc": "0.5"}, "metric 'mcc' = '0.5' is not a number"),
])
def test_summary_refuses_hand_written_metrics_it_cannot_trust(tmp_path, capsys, metrics, message):
    root = tmp_path / "results"
    _write_result(root, "student", "cola", 1e-5, 3, 42, {"mcc": 0.5})
    _write_result(root, "student", "cola", 3e-5, 3, 42, metrics)
    path = root / "student" / "cola" / "lr3e-05_ep3_seed42" / "metrics.json"
    assert cli.main(["summary", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: {message}"), err
    assert "fix" in err and not (root / "summary.csv").exists()


@pytest.mark.parametrize("task, metrics, message", [
    ("mrpc", {"f1": 90.0, "accuracy": 0.8}, "metric 'f1' = 90.0 is outside [0, 1]"),
    ("mnli", {"accuracy_m": 0.8, "accuracy_mm": -0.2}, "metric 'accuracy_mm' = -0.2 is outside [0, 1]"),
    ("mine", {"f1_macro": 1.5}, "metric 'f1_macro' = 1.5 is outside [0, 1]"),
    ("mine", {"spearman": -1.01}, "metric 'spearman' = -1.01 is outside [-1, 1]"),
])
def test_summary_checks_every_metric_range(tmp_path, task, metrics, message):
    root = tmp_path / "results"
    _write_result(root, "student", task, 1e-5, 3, 42, metrics)
    with pytest.raises(TaskDataError, match=re.escape(message)):
        summarize(root)


# --------------------------------------------------------------------------- loaders
def _tsv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")


def _glue_dir(root: Path) -> Path:
    """Two-example files in each GLUE task's original layout."""
    _tsv(root / "CoLA" / "train.tsv", [["gj04", "1", "", "The sailors rode the breeze."],
                                       ["gj04", "0", "*", "The more we study verbs, the crazier they get get."]])
    _tsv(root / "CoLA" / "dev.tsv", [["bc01", "0", "*", 'He said "that" fast.'], ["bc01", "1", "", "Fred ran."]])
    _tsv(root / "SST-2" / "train.tsv", [["sentence", "label"], ["a gorgeous film ", "1"], ["dull", "0"]])
    _tsv(root / "SST-2" / "dev.tsv", [["sentence", "label"], ["it 's a charming journey . ", "1"], ["bad", "0"]])
    mrpc = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    _tsv(root / "MRPC" / "train.tsv", [mrpc, ["1", "702876", "702977", "Amrozi accused his brother .", "He said ."],
                                       ["0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Sold it ."]])
    _tsv(root / "MRPC" / "dev.tsv", [mrpc, ["1", "1", "2", "He was \"found\" .", "He was found ."]])
    sts = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"]
    _tsv(root / "STS-B" / "train.tsv", [sts, ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none",
                                              "A plane is taking off.", "An air plane is taking off.", "5.000"]])
    _tsv(root / "STS-B" / "dev.tsv", [sts, ["0", "main-captions", "MSRvid", "2012test", "0000", "none", "none",
                                            "A man with a hard hat.", "A man wearing a hard hat.", "3.8"]])
    qqp = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    _tsv(root / "QQP" / "train.tsv", [qqp, ["1", "1", "2", "How do I learn?", "How to learn?", "1"],
                                      ["2", "3", "4"],  # a malformed line, as the real QQP has: skipped
                                      ["3", "5", "6", "Why?", "When?", "0"]])
    _tsv(root / "QQP" / "dev.tsv", [qqp, ["9", "7", "8", "Is it?", "Was it?", "0"]])
    mnli = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
    _tsv(root / "MNLI" / "train.tsv", [mnli + ["label1", "gold_label"],
                                       ["0", "31193", "31193n", "government", "( ( x ) )", "( y )", "(ROOT x)",
                                        "(ROOT y)", "Conceptually cream skimming.", "Product and geography.",
                                        "neutral", "neutral"]])
    dev = mnli + ["label1", "label2", "label3", "label4", "label5", "gold_label"]
    _tsv(root / "MNLI" / "dev_matched.tsv", [dev, ["0", "1", "1e", "fiction", "x", "y", "x", "y", "The new rights.",
                                                   "Everyone loves them.", *["contradiction"] * 5, "contradiction"]])
    _tsv(root / "MNLI" / "dev_mismatched.tsv", [dev, ["0", "2", "2e", "letters", "x", "y", "x", "y", "Your gift.",
                                                      "It helps.", *["entailment"] * 5, "entailment"]])
    qnli = ["index", "question", "sentence", "label"]
    _tsv(root / "QNLI" / "train.tsv", [qnli, ["0", "When?", "In 1990.", "entailment"],
                                       ["1", "Who?", "Nobody.", "not_entailment"]])
    _tsv(root / "QNLI" / "dev.tsv", [qnli, ["0", "What?", "It.", "not_entailment"]])
    for folder in ("RTE", "WNLI"):
        lab = ("entailment", "not_entailment") if folder == "RTE" else ("1", "0")
        _tsv(root / folder / "train.tsv", [["index", "sentence1", "sentence2", "label"],
                                           ["0", "No weapons found.", "Weapons found.", lab[1]],
                                           ["1", "A dog ran.", "An animal ran.", lab[0]]])
        _tsv(root / folder / "dev.tsv", [["index", "sentence1", "sentence2", "label"],
                                         ["0", "It is.", "It is.", lab[0]]])
    return root


def test_glue_tsv_layouts(tmp_path):
    root = _glue_dir(tmp_path / "glue_data")
    expected = {  # (train labels, first eval split's labels) as nyu-mll/glue ids
        "cola": ([1, 0], [0, 1]), "sst2": ([1, 0], [1, 0]), "mrpc": ([1, 0], [1]), "qqp": ([1, 0], [0]),
        "qnli": ([0, 1], [1]), "rte": ([1, 0], [0]), "wnli": ([0, 1], [1]),
    }
    for name, task in GLUE_TASKS.items():
        dd = load_task_data(name, root)
        assert set(dd) == {"train", *[s for s, _ in task.eval_splits]}, name
        for split in dd.values():
            assert split.column_names == [*task.text_fields, "label"], name
        if name in expected:
            assert dd["train"]["label"] == expected[name][0], name
            assert dd[task.eval_splits[0][0]]["label"] == expected[name][1], name
    cola = load_task_data("cola", root)
    assert cola["validation"]["sentence"][0] == 'He said "that" fast.'  # quotes kept verbatim (QUOTE_NONE)
    assert load_task_data("mrpc", root)["train"]["sentence1"][0] == "Amrozi accused his brother ."
    stsb = load_task_data("stsb", root)
    assert stsb["validation"]["label"] == [pytest.approx(3.8)]
    assert stsb["train"]["sentence2"] == ["An air plane is taking off."]
    mnli = load_task_data("mnli", root)
    assert mnli["train"]["label"] == [1] and mnli["validation_matched"]["label"] == [2]
    assert mnli["validation_mismatched"]["label"] == [0]
    assert mnli["validation_matched"]["premise"] == ["The new rights."]
    assert load_task_data("qqp", root)["train"]["question1"] == ["How do I learn?", "Why?"]
    # one task's folder passed directly, and a save_to_disk directory with the hub's columns
    assert load_task_data("sst-2", root / "SST-2")["validation"]["sentence"][0] == "it 's a charming journey . "
    load_task_data("rte", root).save_to_disk(str(tmp_path / "disk" / "rte"))
    from_disk = load_task_data("rte", tmp_path / "disk")
    assert from_disk["train"]["label"] == [1, 0] and from_disk["validation"]["sentence1"] == ["It is."]


def test_hub_is_the_default_source(monkeypatch):
    import datasets

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TaskDataError, match=r"nyu-mll/glue.*CoLA/train.tsv"):
        load_task_data("cola")
    assert calls == [("nyu-mll/glue", "cola")]


def test_custom_task_files(tmp_path):
    rows = pd.DataFrame({"a": ["x y", "z", "w"], "b": ["p", "q", "r"], "y": ["pos", "neg", "pos"]})
    for ext, write in ((".csv", lambda df, p: df.to_csv(p, index=False)),
                       (".tsv", lambda df, p: df.to_csv(p, sep="\t", index=False)),
                       (".jsonl", lambda df, p: df.to_json(p, orient="records", lines=True)),
                       (".json", lambda df, p: df.to_json(p, orient="records")),
                       (".parquet", lambda df, p: df.to_parquet(p))):
        path = tmp_path / f"data{ext}"
        write(rows, path)
        task = custom_task("mine", path, path, ["a", "b"], "y", ["accuracy", "f1"])
        assert task.label_names == ("neg", "pos")
        dd = load_task_data(task)
        assert dd["train"]["label"] == [1, 0, 1] and dd["validation"]["b"] == ["p", "q", "r"], ext
    reg = pd.DataFrame({"text": ["a", "b"], "score": [0.5, 4.25]})
    reg.to_csv(tmp_path / "reg.csv", index=False)
    task = custom_task("sim", tmp_path / "reg.csv", tmp_path / "reg.csv", "text", "score", ["pearson", "spearman"])
    assert task.is_regression and load_task_data(task)["train"]["label"] == [0.5, 4.25]


def test_reviews_split(tmp_path):
    ratings = [5, 3, 1, 4, 2, 3, 5, 1, 4, 5, 2, 4] * 2
    titles = ["Love it", None, "Awful!", None, "Meh.", "ok", "", "No", "Yes", "A", "B", "C"] * 2
    df = pd.DataFrame({"Title": titles, "Review Text": [f"review {i}" for i in range(24)], "Rating": ratings})
    df.loc[9, "Review Text"] = None  # no text: dropped
    df.to_parquet(tmp_path / "reviews.parquet")
    splits = load_reviews(tmp_path / "reviews.parquet")
    train, dev = splits["train"][0], splits["validation"][0]
    kept = [i for i, r in enumerate(ratings) if r != 3 and i != 9]
    assert len(kept) == 19 and (len(train["text"]), len(dev["text"])) == (18, 1)  # dev: floor(10% of 19)
    texts = dict(zip(train["text"] + dev["text"], train["label"] + dev["label"], strict=True))
    assert texts["Love it. review 0"] == 1 and texts["Awful! review 2"] == 0 and texts["review 3"] == 1
    assert texts["Meh. review 4"] == 0 and not any(t.endswith(("review 1", "review 5", "review 9")) for t in texts)
    order = np.random.default_rng(0).permutation(19)  # the documented split: dev first, then train
    assert dev["text"][0].endswith(f"review {kept[order[0]]}")
    assert [t.split("review ")[-1] for t in train["text"]] == [str(kept[i]) for i in order[1:]]
    real = REPO / "assets" / "reviews" / "reviews.parquet"
    if real.is_file():  # the offline table: 19818 kept reviews, 1981 in dev
        dd = load_task_data("reviews", real)
        assert (len(dd["train"]), len(dd["validation"])) == (17837, 1981)
        assert dd["validation"]["text"][:3] == load_task_data("reviews", real.parent)["validation"]["text"][:3]


# --------------------------------------------------------------------------- config and command line
# The command's flags before the parser was generated from EvaluationConfig: (flag, nargs, default, choices).
RUN_FLAGS = {
    "tasks": ("+", None, None), "learning_rate": ("+", [1e-5, 3e-5, 5e-5], None), "epochs": ("+", [3, 5, 10], None),
    "seeds": ("+", [42], None), "output_dir": (None, "./evaluation_results", None), "model_name": (None, None, None),
    "tokenizer_name": (None, None, None), "data_dir": (None, None, None),
    "per_device_train_batch_size": (None, 32, None), "per_device_eval_batch_size": (None, 64, None),
    "max_seq_length": (None, 128, None), "warmup_ratio": (None, 0.1, None), "weight_decay": (None, 0.01, None),
    "max_train_samples": (None, None, None), "max_eval_samples": (None, None, None),
    "precision": (None, "fp32", ["fp32", "bf16", "fp16"]), "cache_dir": (None, None, None),
    "devices": ("+", None, None), "overwrite": (0, False, None), "redo_changed": (0, False, None),
    "group_by_length": (0, False, None), "aggregation": (None, "best", ["best", "mean", "median"]),
    "task_name": (None, "custom", None), "train_file": (None, None, None), "validation_file": (None, None, None),
    "text_fields": ("+", ["text"], None), "label_field": (None, "label", None), "metrics": ("+", ["accuracy"], None),
    "labels": ("+", None, None),
}
SUMMARY_FLAGS = {"aggregation": (None, "best", ["best", "mean", "median"]), "metrics": (None, "main", ["main", "all"]),
                 "models": ("+", None, None), "tasks": ("+", None, None), "output_file": (None, None, None),
                 "hyperparameters": (0, False, None)}


def _flags(parser) -> dict:
    return {a.dest: (a.nargs, a.default, a.choices) for a in parser._actions if a.option_strings and a.dest != "help"}


def test_command_line_flags_are_the_config_fields():
    assert _flags(cli.run_parser("evaluate_glue.py")) == RUN_FLAGS
    assert _flags(cli.summary_parser("evaluate_glue.py")) == SUMMARY_FLAGS
    args = cli.run_parser().parse_args(["model", "--learning_rate", "1e-5", "2e-5", "--devices", "0", "cpu",
                                        "--redo_changed", "--max_train_samples", "100"])
    config = EvaluationConfig(**vars(args))
    assert config.learning_rate == [1e-5, 2e-5] and config.devices == [0, "cpu"] and config.max_train_samples == 100
    assert config.overwrite_mode == "changed" and config.tasks == [get_task(t) for t in DEFAULT_TASKS]
    defaults = EvaluationConfig(**vars(cli.run_parser().parse_args(["runs/x/student/"])))
    assert defaults == EvaluationConfig("runs/x/student/") and defaults.model_name == "student"
    assert defaults.overwrite_mode is False
    assert EvaluationConfig("m", overwrite=True, redo_changed=True).overwrite_mode is True


def test_config_normalizes_and_explains_mistakes(tmp_path, capsys):
    c = EvaluationConfig(tmp_path / "model", "sst-2", 3e-5, 3, [1, 1, 2], "out", overwrite="changed", seed=None)
    assert (c.model_name_or_path, c.model_name) == (str(tmp_path / "model"), "model")
    assert c.tasks == [get_task("sst2")] and c.learning_rate == [3e-5] and c.epochs == [3.0] and c.seeds == [1, 2]
    assert c.redo_changed and not c.overwrite and c.output_dir == "out"
    assert EvaluationConfig("m", seeds=[1, 2], seed=7).seeds == [7]  # bertdistiller's single seed wins
    assert EvaluationConfig("m", train_file="t.csv", validation_file="v.csv").tasks == []  # only the custom task
    with pytest.raises(TypeError):
        EvaluationConfig("m", ["sst2"], 1e-5, 3, 42, "out", "a-model-name")  # later fields by name only
    for kwargs, message in [
        ({"learning_rate": [0, 1e-5]}, r"learning_rate=\[0.0, 1e-05\] must be > 0"),
        ({"epochs": []}, "epochs is empty: give at least one value"),
        ({"seeds": [1.5]}, "expected whole numbers"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size=0 must be a positive integer"),
        ({"warmup_ratio": 1.0}, r"warmup_ratio=1.0 must be in \[0, 1\)"),
        ({"precision": "int8"}, "precision='int8': choose among fp32, bf16, fp16"),
        ({"tasks": []}, "no tasks given: name some"),
        ({"tasks": ["sst3"]}, "unknown task 'sst3'"),
        ({"overwrite": "yes"}, "overwrite='yes': choose False, True or 'changed'"),
        ({"devices": ["gpu0"]}, r"devices=\['gpu0'\]: give GPU indices \(--devices 0 1 ...\) or 'cpu'"),
        ({"model_name": "a/b"}, "model_name='a/b': give a plain name"),
        ({"aggregation": "max"}, "aggregation='max': choose among best, mean, median"),
    ]:
        with pytest.raises(TaskDataError, match=message):
            EvaluationConfig("m", **kwargs)
    assert cli.main(["m", "--devices", "1", "gpu"]) == 2
    assert "error: devices=['1', 'gpu']: give GPU indices" in capsys.readouterr().err


def test_cli_args_generates_flags_from_any_dataclass():
    import argparse
    from dataclasses import dataclass

    from distill.cli_args import add_arguments, option

    @dataclass
    class Options:
        path: str = option("where", positional=True)
        sizes: "int | list[int]" = option("sizes", default_factory=lambda: [1, 2])
        rate: float | None = option("rate", default=None)
        fast: bool = option("go fast", default=False)
        color: bool = option("colors", default=True, group="looks")
        mode: str = option("mode", default="a", choices=("a", "b"), group="looks")
        hook: object = option("Python only", default=None, flag=False)

    parser = add_arguments(argparse.ArgumentParser(), Options)
    assert Options(**vars(parser.parse_args(["p"]))) == Options("p")
    parsed = Options(**vars(parser.parse_args(["p", "--sizes", "3", "--rate", "0.5", "--fast", "--no-color"])))
    assert parsed == Options("p", sizes=[3], rate=0.5, fast=True, color=False)
    assert "looks" in [g.title for g in parser._action_groups] and "--hook" not in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["p", "--mode", "c"])
    layered = add_arguments(argparse.ArgumentParser(), Options, suppress_defaults=True)
    assert vars(layered.parse_args(["p", "--rate", "none"])) == {"path": "p", "rate": None}
    assert "(default: [1, 2])" in layered.format_help()


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_fail_before_training(tmp_path, tiny_model_dir, tiny_task_files):
    train, dev = tiny_task_files
    out = tmp_path / "results"
    with pytest.raises(TaskDataError, match=r"unknown task 'glue_cola'.*cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, "
                                            r"wnli, reviews"):
        evaluate(tiny_model_dir, tasks=["glue_cola"], output_dir=out)
    with pytest.raises(TaskDataError, match=r"missing column\(s\) \['text'\]"):
        custom_task("mine", train, dev, "text", "label")
    root = _glue_dir(tmp_path / "glue")
    _tsv(root / "SST-2" / "dev.tsv", [["sentence", "label"], ["fine", "1"], ["what", "2"]])
    with pytest.raises(TaskDataError, match=r"label '2' of row 1 is outside the task's labels"):
        evaluate(tiny_model_dir, tasks=["sst2"], data_dir=root, output_dir=out, **TINY)
    _tsv(root / "QNLI" / "dev.tsv", [["index", "question", "text", "label"], ["0", "What?", "It.", "entailment"]])
    with pytest.raises(TaskDataError, match=r"missing column\(s\) \['sentence'\]"):
        load_task_data("qnli", root)
    with pytest.raises(TaskDataError, match=r"no GLUE MRPC data under"):
        load_task_data("mrpc", tmp_path)
    odd_dev = tmp_path / "odd_dev.csv"
    pd.DataFrame({"sentence": ["a", "b"], "label": [0, 7]}).to_csv(odd_dev, index=False)
    task = custom_task("mine", train, odd_dev, "sentence")
    with pytest.raises(TaskDataError, match=r"label '7' of row 1 is outside the task's labels \['0', '1'\]"):
        evaluate(tiny_model_dir, tasks=[task], output_dir=out, **TINY)
    no_tok = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_model_dir, no_tok, ignore=shutil.ignore_patterns("tok*", "vocab*", "special*"))
    with pytest.raises(TaskDataError, match="no tokenizer in"):
        evaluate(no_tok, tasks=[custom_task("mine", train, dev, "sentence")], output_dir=out, **TINY)
    with pytest.raises(TaskDataError, match="max_seq_length=512 is longer than the model's 64 positions"):
        evaluate(tiny_model_dir, tasks=[custom_task("mine", train, dev, "sentence")], output_dir=out,
                 **{**TINY, "max_seq_length": 512})
    assert not out.exists()  # nothing started

    script = _load_script()
    assert script.main([str(tiny_model_dir), "--tasks", "nope", "--output_dir", str(out)]) == 2
    assert cli.main(["summary", str(tmp_path / "missing")]) == 2


def test_an_output_dir_that_cannot_be_written_is_refused_before_any_work(tmp_path, tiny_task_files, capsys,
                                                                         monkeypatch):
    from distill.evaluation import grid

    train, dev = tiny_task_files
    monkeypatch.setattr(grid, "load_tokenizer", lambda *a: pytest.fail("work done before the output_dir check"))
    args = [str(tmp_path / "no-model"), "--train_file", str(train), "--validation_file", str(dev),
            "--text_fields", "sentence", "--output_dir"]
    assert_unwritable_outputs_refused(cli.main, args, "output_dir", tmp_path, capsys, monkeypatch)
    locked = tmp_path / "locked"
    # the summary's CSV
    root = tmp_path / "results"
    _write_result(root, "student", "cola", 1e-5, 3, 42, {"mcc": 0.5})
    assert cli.main(["summary", str(root), "--output_file", str(tmp_path / "file" / "summary.csv")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert cli.main(["summary", str(root), "--output_file", str(locked / "summary.csv")]) == 2
    assert "is not writable (permission denied)" in capsys.readouterr().err


def test_a_full_disk_stops_the_grid_and_keeps_the_finished_runs(tmp_path, tiny_model_dir, tiny_task_files, capsys,
                                                               monkeypatch):
    import errno

    from distill.evaluation import grid
    from distill.io import atomic_write_json

    train, dev = tiny_task_files
    calls = []

    def fake_finetune(run_dir, settings, **kw):
        calls.append(run_dir)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "metrics.json"))
        result = {"learning_rate": settings.learning_rate, "epochs": settings.epochs, "seed": settings.seed,
                  "metrics": {"accuracy": 0.75}, "metric_keys": ["accuracy"]}
        atomic_write_json(run_dir / "metrics.json", result)
        return result

    monkeypatch.setattr(grid, "run_finetune", fake_finetune)
    out = tmp_path / "results"
    argv = [str(tiny_model_dir), "--train_file", str(train), "--validation_file", str(dev), "--text_fields",
            "sentence", "--output_dir", str(out), "--learning_rate", "1e-4", "2e-4", "3e-4", "--epochs", "1",
            "--max_seq_length", "16"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no space left on device writing the results in {out} "
                          f"({calls[1] / 'metrics.json'}): the 1 finished run(s) are kept"), err
    assert len(calls) == 2, err  # the grid stopped: the third run would fail the same way
    assert (calls[0] / "metrics.json").is_file()


# --------------------------------------------------------------------------- end to end
def test_tiny_finetune_grid_writes_results_and_skips_finished(tmp_path, tiny_model_dir, tiny_task_files, capsys,
                                                               monkeypatch):
    from distill.evaluation import grid

    train, dev = tiny_task_files
    task = custom_task("tiny", train, dev, "sentence", metrics=["accuracy", "f1"])
    out = tmp_path / "results"
    lines = []
    records = evaluate(tiny_model_dir, tasks=[task], seeds=[1, 2], output_dir=out, model_name="tiny-bert",
                       log=lines.append, **TINY)
    assert [r["status"] for r in records] == ["finished", "finished"]
    run_dirs = [out / "tiny-bert" / "tiny" / f"lr0.0005_ep1_seed{s}" for s in (1, 2)]
    for d in run_dirs:
        result = json.loads((d / "metrics.json").read_text())
        settings = json.loads((d / "settings.json").read_text())
        assert set(result["metrics"]) == {"accuracy", "f1"} and 0 <= result["metrics"]["accuracy"] <= 1
        assert result["train"]["examples"] == 48 and result["train"]["steps"] == 6 and result["eval_examples"] == {
            "validation": 24}
        assert settings["max_seq_length"] == 16 and settings["task"]["name"] == "tiny"
    assert any(line.startswith("[2/2] tiny-bert tiny lr=0.0005 epochs=1 seed=2: accuracy ") for line in lines)

    # a re-run skips both; an unfinished run (no metrics.json) is redone; a failing run is reported, others go on
    mtime = run_dirs[0].joinpath("metrics.json").stat().st_mtime_ns
    run_dirs[1].joinpath("metrics.json").unlink()
    lines.clear()
    real = grid.run_finetune

    def failing_seed_3(run_dir, settings, **kw):
        if settings.seed == 3:
            raise RuntimeError("out of memory")
        return real(run_dir, settings, **kw)

    monkeypatch.setattr(grid, "run_finetune", failing_seed_3)
    records = evaluate(tiny_model_dir, tasks=[task], seeds=[1, 2, 3], output_dir=out, model_name="tiny-bert",
                       log=lines.append, **TINY)
    assert [r["status"] for r in records] == ["skipped", "finished", "failed"]
    assert run_dirs[0].joinpath("metrics.json").stat().st_mtime_ns == mtime
    assert any("seed=3: FAILED: RuntimeError: out of memory" in line for line in lines)
    assert "out of memory" in (out / "tiny-bert" / "tiny" / "lr0.0005_ep1_seed3" / "error.txt").read_text()
    assert lines[-1].endswith("1 FAILED (see error.txt in their run directories)")

    # a finished run made with other settings is refused before training
    with pytest.raises(TaskDataError, match="other settings.*max_seq_length=16 \\(now 32\\)"):
        evaluate(tiny_model_dir, tasks=[task], seeds=[1], output_dir=out, model_name="tiny-bert",
                 log=lines.append, **{**TINY, "max_seq_length": 32})

    # a re-trained model saved in the same place: its old results are refused, or redone with overwrite="changed"
    from transformers import BertModel

    model_v2 = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_v2)
    evaluate(model_v2, tasks=[task], seeds=[1], output_dir=out, log=lines.append, **TINY)
    model = BertModel.from_pretrained(model_v2)
    model.embeddings.word_embeddings.weight.data.mul_(2)
    model.save_pretrained(model_v2)
    with pytest.raises(TaskDataError, match="another model"):
        evaluate(model_v2, tasks=[task], seeds=[1], output_dir=out, log=lines.append, **TINY)
    assert [r["status"] for r in evaluate(model_v2, tasks=[task], seeds=[1], output_dir=out, log=lines.append,
                                          overwrite="changed", **TINY)] == ["finished"]
    shutil.rmtree(out / "model")

    # the CLI's summary reads the same results: mean over seeds 1 and 2 (seed 3 failed)
    capsys.readouterr()
    assert cli.main(["summary", str(out), "--aggregation", "mean", "--hyperparameters"]) == 0
    printed = capsys.readouterr().out
    scores = [json.loads((d / "metrics.json").read_text())["score"] for d in run_dirs]
    assert "| model | tiny | avg |" in printed and f"{100 * np.mean(scores):.2f}" in printed
    assert "mean of 2 runs" in printed and (out / "summary.csv").is_file()


def test_glue_tasks_end_to_end_from_tsv(tmp_path, tiny_model_dir):
    """MNLI's two dev sets and STS-B's regression head, trained from the hand-written GLUE layout."""
    root = _glue_dir(tmp_path / "glue")
    out = tmp_path / "results"
    records = evaluate(tiny_model_dir, tasks=["mnli", "stsb"], data_dir=root, seeds=[7], output_dir=out,
                       model_name="tiny", log=lambda line: None, **TINY)
    assert [r["status"] for r in records] == ["finished", "finished"]
    assert set(records[0]["metrics"]) == {"accuracy_m", "accuracy_mm"}
    assert set(records[1]["metrics"]) == {"pearson", "spearman"}
    stsb = json.loads((Path(records[1]["run_dir"]) / "metrics.json").read_text())
    assert stsb["eval_examples"] == {"validation": 1} and stsb["train"]["examples"] == 1
    mnli = json.loads((Path(records[0]["run_dir"]) / "metrics.json").read_text())
    assert mnli["eval_examples"] == {"validation_matched": 1, "validation_mismatched": 1}
    table = create_summary_table(out, save=False)
    assert list(table.columns) == ["stsb", "mnli", "avg"]
    mnli_scores = mnli["metrics"]["accuracy_m"] + mnli["metrics"]["accuracy_mm"]
    assert table.loc["tiny", "mnli"] == pytest.approx(50 * mnli_scores)


@pytest.mark.slow
def test_grid_in_worker_processes(tmp_path, tiny_model_dir, tiny_task_files, capsys):
    """The multi-GPU path (one subprocess per device at a time), here with two CPU workers."""
    train, dev = tiny_task_files
    task = custom_task("tiny", train, dev, "sentence")
    out = tmp_path / "results"
    lines = []
    records = evaluate(tiny_model_dir, tasks=[task], seeds=[1, 2], output_dir=out, devices=["cpu", "cpu"],
                       log=lines.append, **TINY)
    assert [r["status"] for r in records] == ["finished", "finished"], lines
    assert sum("running on cpu" in line for line in lines) == 2
    for r in records:
        assert json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["metrics"] == r["metrics"]
    # the CLI, same grid: both runs skipped, then the table
    capsys.readouterr()
    assert cli.main([str(tiny_model_dir), "--train_file", str(train), "--validation_file", str(dev), "--task_name",
                     "tiny", "--text_fields", "sentence", "--learning_rate", "5e-4", "--epochs", "1", "--seeds", "1",
                     "2", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
                     "--max_seq_length", "16", "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, skipped") == 2 and f"| {tiny_model_dir.name} |" in printed


# --------------------------------------------------------------------------- damaged state, degenerate input
def _fake_finetune(calls):
    from distill.io import atomic_write_json

    def fake(run_dir, settings, **kw):
        calls.append(run_dir)
        result = {"learning_rate": settings.learning_rate, "epochs": settings.epochs, "seed": settings.seed,
                  "metrics": {"accuracy": 0.75}, "metric_keys": ["accuracy"]}
        atomic_write_json(run_dir / "metrics.json", result)
        return result
    return fake


def test_a_damaged_settings_file_counts_as_changed_settings(tmp_path, tiny_model_dir, tiny_task_files, capsys,
                                                           monkeypatch):
    """settings.json carries a checksum: an edited or truncated one never makes a finished run pass for another."""
    from distill.evaluation import grid

    train, dev = tiny_task_files
    calls = []
    monkeypatch.setattr(grid, "run_finetune", _fake_finetune(calls))
    task = custom_task("tiny", train, dev, "sentence")
    out = tmp_path / "results"
    kwargs = dict(tasks=[task], seeds=[1], output_dir=out, model_name="m", log=lambda line: None, **TINY)
    evaluate(tiny_model_dir, **kwargs)
    settings = out / "m" / "tiny" / "lr0.0005_ep1_seed1" / "settings.json"
    assert len(calls) == 1 and settings.with_name("settings.json.sha256").is_file()
    capsys.readouterr()
    # the run was made with max_seq_length 16; its file now says 32, as the new request: not trusted
    settings.write_text(settings.read_text().replace('"max_seq_length": 16', '"max_seq_length": 32'))
    with pytest.raises(TaskDataError, match="settings.json does not match its checksum"):
        evaluate(tiny_model_dir, **{**kwargs, "max_seq_length": 32})
    assert f"note: {settings} does not match its checksum" in capsys.readouterr().err
    assert len(calls) == 1
    records = evaluate(tiny_model_dir, **{**kwargs, "max_seq_length": 32}, overwrite="changed")
    assert [r["status"] for r in records] == ["finished"] and len(calls) == 2  # recomputed
    assert f"note: {settings} does not match its checksum" in capsys.readouterr().err
    assert json.loads(settings.read_text())["max_seq_length"] == 32
    # a truncated one (not JSON at all) hid any change before: now it is a change too
    settings.write_text(settings.read_text()[:20])
    with pytest.raises(TaskDataError, match="does not match its checksum"):
        evaluate(tiny_model_dir, **{**kwargs, "max_seq_length": 32})
    settings.with_name("settings.json.sha256").unlink()
    with pytest.raises(TaskDataError, match="settings.json cannot be read as JSON"):
        evaluate(tiny_model_dir, **{**kwargs, "max_seq_length": 32})
    assert len(calls) == 2
    # an earlier version's settings.json (no checksum file, valid JSON) is trusted as written, with a note
    evaluate(tiny_model_dir, **{**kwargs, "max_seq_length": 32}, overwrite="changed")
    settings.with_name("settings.json.sha256").unlink()
    capsys.readouterr()
    records = evaluate(tiny_model_dir, **{**kwargs, "max_seq_length": 32})
    assert [r["status"] for r in records] == ["skipped"] and len(calls) == 3
    assert "has no checksum (written by an earlier version): its settings are trusted" in capsys.readouterr().err


@pytest.mark.parametrize("seeds", [["-1"], ["1", "-5"], [str(2 ** 32)]])
def test_seeds_out_of_range_are_refused_before_any_work(tmp_path, tiny_task_files, capsys, monkeypatch, seeds):
    from distill.evaluation import grid

    train, dev = tiny_task_files
    monkeypatch.setattr(grid, "load_tokenizer", lambda *a: pytest.fail("work done before the seeds were checked"))
    assert cli.main([str(tmp_path / "m"), "--train_file", str(train), "--validation_file", str(dev),
                     "--text_fields", "sentence", "--output_dir", str(tmp_path / "out"), "--seeds", *seeds]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: seeds=") and "must be whole numbers from 0 to 4294967295" in err, err
    assert not (tmp_path / "out").exists()
    EvaluationConfig("m", seeds=[0, 2 ** 32 - 1])  # the ends of the range


def test_fractional_labels_are_not_classes(tmp_path):
    fractional = tmp_path / "fractional.csv"
    pd.DataFrame({"sentence": ["a", "b", "c", "d"], "label": [0.5, 1.5, 0.5, 1.5]}).to_csv(fractional, index=False)
    with pytest.raises(TaskDataError, match=r"label column 'label' holds numbers with fractions \(0.5, 1.5\), not "
                                            r"class labels: .*pearson"):
        custom_task("mine", fractional, fractional, "sentence")
    # whole numbers written as floats are the classes they name, in every file and format
    train, dev = tmp_path / "train.csv", tmp_path / "dev.jsonl"
    pd.DataFrame({"sentence": ["a", "b", "c", "d"], "label": ["1.0", "0.0", "1.0", "2.0"]}).to_csv(train, index=False)
    pd.DataFrame({"sentence": ["e", "f"], "label": [1, 2]}).to_json(dev, orient="records", lines=True)
    task = custom_task("mine", train, dev, "sentence")
    assert task.label_names == ("0", "1", "2")
    data = load_task_data(task)
    assert data["train"]["label"] == [1, 0, 1, 2] and data["validation"]["label"] == [1, 2]
    named = load_task_data(custom_task("mine", train, dev, "sentence", labels=["1.0", "2.0", "0.0"]))
    assert named["train"]["label"] == [0, 2, 0, 1] and named["validation"]["label"] == [0, 1]  # by name, not position


def test_all_empty_texts_are_refused(tmp_path):
    train = tmp_path / "train.csv"
    pd.DataFrame({"sentence": ["", " ", None, ""], "label": [0, 1, 0, 1]}).to_csv(train, index=False)
    good = tmp_path / "good.csv"
    pd.DataFrame({"sentence": ["a", "b"], "label": [0, 1]}).to_csv(good, index=False)
    with pytest.raises(TaskDataError, match=rf"{re.escape(str(train))}: all 4 rows of column 'sentence' are empty"):
        load_task_data(custom_task("mine", train, good, "sentence"))


def test_one_file_as_train_and_validation_is_refused(tmp_path, tiny_task_files, capsys):
    train, _ = tiny_task_files
    twin = tmp_path / "twin.csv"
    twin.symlink_to(train)
    for dev in (train, twin):
        with pytest.raises(TaskDataError, match="are the same file") as info:
            EvaluationConfig("m", train_file=str(train), validation_file=str(dev))
        assert "measured on the rows it was trained on" in str(info.value)
    assert cli.main(["m", "--train_file", str(train), "--validation_file", str(train), "--text_fields", "sentence",
                     "--output_dir", str(tmp_path / "out")]) == 2
    assert "are the same file" in capsys.readouterr().err


def test_a_task_named_twice_is_run_once_with_a_note(capsys):
    config = EvaluationConfig("m", tasks=["sst2", "SST-2", "cola", "sst2"])
    assert [t.name for t in config.tasks] == ["sst2", "cola"]
    assert "note: task sst2 is named 3 times: it is run once" in capsys.readouterr().err


def test_a_missing_split_file_is_named_not_printed_as_none(tmp_path, tiny_task_files, capsys):
    train, dev = tiny_task_files
    for args, missing in [(["--train_file", str(train)], "--validation_file"),
                          (["--validation_file", str(dev)], "--train_file")]:
        assert cli.main(["m", *args, "--text_fields", "sentence", "--output_dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "None" not in err and f"no {missing} given: pass {missing}" in err, err
    with pytest.raises(TaskDataError, match=r"custom task 'mine': no validation file given") as info:
        custom_task("mine", train, None, "sentence")
    assert "None" not in str(info.value)
    with pytest.raises(TaskDataError, match=rf"validation file {re.escape(str(tmp_path / 'nope.csv'))} not found"):
        custom_task("mine", train, tmp_path / "nope.csv", "sentence")


def test_a_model_directory_without_config_or_a_missing_local_path_is_named(tmp_path, tiny_model_dir,
                                                                          tiny_task_files, capsys):
    train, dev = tiny_task_files
    args = ["--train_file", str(train), "--validation_file", str(dev), "--text_fields", "sentence", "--output_dir",
            str(tmp_path / "out")]
    no_config = tmp_path / "no_config"
    shutil.copytree(tiny_model_dir, no_config, ignore=shutil.ignore_patterns("config.json"))
    assert cli.main([str(no_config), *args]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {no_config} has no config.json: give an exported model (a run's OUTPUT_DIR/student, or "
                   f"distill-export RUN_DIR --out DIR) or a directory saved with save_pretrained\n"), err
    run = tmp_path / "run"  # a distillation run's output directory: its exported student is named
    (run / "student").mkdir(parents=True)
    (run / "run_config.json").write_text(json.dumps({"output_dir": str(run)}))
    (run / "student" / "config.json").write_text("{}")
    assert cli.main([str(run), *args]) == 2
    assert f"{run} is a distillation run's output directory, not a model: give its exported student, " \
           f"{run / 'student'}" in capsys.readouterr().err
    for local in ("./no/such/model", str(tmp_path / "missing"), "~/no-such-model-here", "models/none"):
        assert cli.main([local, *args]) == 2
        err = capsys.readouterr().err
        assert err == f"error: model {local}: no such directory\n", err
    assert cli.main([str(tiny_model_dir), "--tokenizer_name", "./no/tokenizer", *args]) == 2
    assert capsys.readouterr().err == "error: tokenizer ./no/tokenizer: no such directory\n"
    assert not (tmp_path / "out").exists()


def test_the_summary_takes_hyperparameters_only_from_a_settings_file_that_matches_its_checksum(tmp_path, capsys):
    from distill.evaluation.finetune import write_checked_json

    root = tmp_path / "results"
    for lr, name in ((1e-5, "a"), (3e-5, "b")):
        d = root / name / "cola" / "run"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"metrics": {"mcc": 0.5}}))  # no hyper-parameters in it
        write_checked_json(d / "settings.json", {"learning_rate": lr, "epochs": 3, "seed": 42})
    damaged = root / "b" / "cola" / "run" / "settings.json"
    damaged.write_text(damaged.read_text().replace("3e-05", "5e-05"))
    hp = create_summary_table(root, save=False).attrs["hyperparameters"]
    assert hp.loc["a", "cola"] == "lr=1e-05 epochs=3 seed=42"
    assert hp.loc["b", "cola"] == "lr=None epochs=None seed=None"  # not the edited 5e-05
    assert f"note: {damaged} does not match its checksum" in capsys.readouterr().err
