"""distill.evaluation.embeddings / embedding_eval: frozen-embedding scores (MTEB-style), the cache, the results
tree and the summary's columns, sentence-transformers and plain Hugging Face directories, bad input."""
from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import ASSETS, WORDS, save_tiny_teacher
from unwritable import assert_unwritable_outputs_refused

from distill.evaluation import embedding_eval as E
from distill.evaluation import embeddings as M
from distill.evaluation.summary import create_summary_table, summarize
from distill.evaluation.tasks import TaskDataError, custom_task, get_task, load_task_data

QUIET = ["--no-progress_bar", "--max_seq_length", "32", "--batch_size", "16"]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A plain Hugging Face BERT directory (3 layers, width 32) with the tiny tokenizer."""
    return save_tiny_teacher(tmp_path_factory.mktemp("hf_model"), tiny_tokenizer_dir, seed=1)


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory, hf_dir) -> Path:
    """A sentence-transformers directory: that BERT, mean pooling, normalisation."""
    from sentence_transformers import SentenceTransformer, models

    word = models.Transformer(str(hf_dir), max_seq_length=32)
    width = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension  # renamed in 6.x
    modules = [word, models.Pooling(width(), "mean"), models.Normalize()]
    directory = tmp_path_factory.mktemp("st_model") / "st"
    SentenceTransformer(modules=modules, device="cpu").save(str(directory))
    return directory


def _sentences(rng: random.Random, cls: int, n_classes: int) -> str:
    """Six words, mostly from the class's own share of the vocabulary (so the classes are learnable)."""
    share = len(WORDS) // n_classes
    own = WORDS[cls * share:(cls + 1) * share]
    return " ".join(rng.choice(own) if rng.random() < 0.8 else rng.choice(WORDS) for _ in range(6))


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> dict[str, Path]:
    """train.csv / dev.csv (3 classes), pairs.jsonl (binary), sts.parquet (scores 0-5)."""
    d = tmp_path_factory.mktemp("tasks")
    rng = random.Random(0)
    for split, n in (("train", 60), ("dev", 30)):
        rows = [{"sentence": _sentences(rng, i % 3, 3), "label": ["bad", "good", "meh"][i % 3]} for i in range(n)]
        pd.DataFrame(rows).to_csv(d / f"{split}.csv", index=False)
    pairs = []
    for i in range(30):
        a = _sentences(rng, i % 3, 3)
        same = i % 2 == 0
        b = " ".join(a.split()[:4] + rng.sample(WORDS, 2)) if same else _sentences(rng, (i + 1) % 3, 3)
        pairs.append({"q1": a, "q2": b, "dup": "yes" if same else "no"})
    pd.DataFrame(pairs).to_json(d / "pairs.jsonl", orient="records", lines=True)
    sts = [{"q1": p["q1"], "q2": p["q2"], "score": rng.uniform(3, 5) if p["dup"] == "yes" else rng.uniform(0, 2)}
           for p in pairs]
    pd.DataFrame(sts).to_parquet(d / "sts.parquet")
    return {"train": d / "train.csv", "dev": d / "dev.csv", "pairs": d / "pairs.jsonl", "sts": d / "sts.parquet"}


def _custom(files, *extra) -> list[str]:
    return ["--train_file", str(files["train"]), "--validation_file", str(files["dev"]), "--text_fields", "sentence",
            "--task_name", "tiny", *extra]


def _mean_pool(model_dir: Path, texts: list[str], max_len: int = 32) -> np.ndarray:
    """Masked mean of the last hidden state, computed here from scratch."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    enc = tok(texts, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


def _mteb_rows(labels, per_label: int, n_experiments: int, seed: int = 42) -> list[list[int]]:
    """MTEB's AbsTaskClassification._undersample_data, experiment after experiment, written out again here."""
    idxs, out = np.arange(len(labels)), []
    for _ in range(n_experiments):
        np.random.default_rng(seed).shuffle(idxs)
        counter, rows = defaultdict(int), []
        for i in idxs:
            if counter[labels[i]] < per_label:
                rows.append(int(i))
                counter[labels[i]] += 1
        out.append(rows)
    return out


def _cached(run_dir: Path, key: str) -> np.ndarray:
    (path,) = (run_dir / "embeddings").glob(f"{key}.*.npy")
    return np.load(path)


# --------------------------------------------------------------------------- the scores
def test_every_score_matches_sklearn_and_scipy_on_the_same_embeddings(tmp_path, hf_dir, task_files, capsys):
    from scipy.stats import spearmanr
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, v_measure_score

    out = tmp_path / "results"
    assert E.main([str(hf_dir), "--output_dir", str(out), *QUIET, *_custom(task_files, "--samples_per_label", "5",
                                                                            "--n_experiments", "3")]) == 0
    run = out / hf_dir.name / "tiny" / "embeddings_mean_len32"
    result = json.loads((run / "metrics.json").read_text())
    assert result["kind"] == "embeddings" and result["types"] == ["classification", "clustering"]
    # the embeddings: masked mean pooling, the dev rows in file order
    dev, train = pd.read_csv(task_files["dev"]), pd.read_csv(task_files["train"])
    x_dev = _cached(run, "validation.sentence")
    np.testing.assert_allclose(x_dev, _mean_pool(hf_dir, dev.sentence.tolist()), atol=1e-5)
    y_dev = dev.label.map({"bad": 0, "good": 1, "meh": 2}).to_numpy()
    y_train = train.label.map({"bad": 0, "good": 1, "meh": 2}).to_numpy()
    experiments = _mteb_rows(y_train, 5, 3)
    used = sorted({r for e in experiments for r in e})  # only these train rows are encoded, in row order
    x_train = _cached(run, "train.sentence")
    np.testing.assert_allclose(x_train, _mean_pool(hf_dir, train.sentence[used].tolist()), atol=1e-5)
    acc, f1 = [], []
    for rows in experiments:
        pos = [used.index(r) for r in rows]
        pred = LogisticRegression(max_iter=100, random_state=42).fit(x_train[pos], y_train[rows]).predict(x_dev)
        acc.append(accuracy_score(y_dev, pred))
        f1.append(f1_score(y_dev, pred, average="macro"))
    kmeans = MiniBatchKMeans(n_clusters=3, batch_size=500, n_init="auto", random_state=42).fit(x_dev)
    assert result["metrics"] == pytest.approx({"cls-acc": np.mean(acc), "cls-f1": np.mean(f1),
                                               "cluster-v": v_measure_score(y_dev, kmeans.labels_)}, abs=1e-9)
    assert result["examples"] == {"validation": 30, "train": len(used)}
    assert "tiny: cls-acc" in capsys.readouterr().out

    # pairs (JSON lines): average precision of cosine; STS (parquet): Spearman of cosine
    pairs = pd.read_json(task_files["pairs"], lines=True)
    assert E.main([str(hf_dir), "--output_dir", str(out), *QUIET, "--validation_file", str(task_files["pairs"]),
                   "--text_fields", "q1", "q2", "--label_field", "dup", "--task_name", "pairs"]) == 0
    run = out / hf_dir.name / "pairs" / "embeddings_mean_len32"
    a, b = _cached(run, "validation.q1"), _cached(run, "validation.q2")
    np.testing.assert_allclose(b, _mean_pool(hf_dir, pairs.q2.tolist()), atol=1e-5)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    result = json.loads((run / "metrics.json").read_text())
    assert result["types"] == ["pair_classification"]  # two text columns, two classes: "yes" (sorted 2nd) positive
    assert result["metrics"]["pair-ap"] == pytest.approx(average_precision_score(pairs.dup == "yes", cos), abs=1e-9)
    assert E.main([str(hf_dir), "--output_dir", str(out), *QUIET, "--validation_file", str(task_files["pairs"]),
                   "--text_fields", "q1", "q2", "--label_field", "dup", "--task_name", "pairs",
                   "--positive_label", "no"]) == 0
    result = json.loads((run / "metrics.json").read_text())
    assert result["metrics"]["pair-ap"] == pytest.approx(average_precision_score(pairs.dup == "no", cos), abs=1e-9)
    sts = pd.read_parquet(task_files["sts"])
    assert E.main([str(hf_dir), "--output_dir", str(out), *QUIET, "--validation_file", str(task_files["sts"]),
                   "--text_fields", "q1", "q2", "--label_field", "score", "--task_name", "sts",
                   "--task_types", "sts"]) == 0
    result = json.loads((out / hf_dir.name / "sts" / "embeddings_mean_len32" / "metrics.json").read_text())
    assert result["metrics"]["sts-spearman"] == pytest.approx(spearmanr(cos, sts.score)[0], abs=1e-6)


def test_score_functions_on_random_embeddings():
    """The pure scoring functions against scikit-learn and scipy directly, and MTEB's undersampling."""
    from scipy.stats import spearmanr
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, average_precision_score, v_measure_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    x = rng.normal(size=(200, 16)) + y[:, None] * 0.5
    rows = M.undersample(y, 8, 4)
    assert [list(r) for r in rows] == _mteb_rows(y, 8, 4)
    assert all(np.bincount(y[r]).tolist() == [8, 8, 8, 8] for r in rows)
    assert [list(r) for r in M.undersample(y, None, 4)] == [list(range(200))]  # None: every row, once
    got = M.classification_scores(x, y, x[:50], y[:50], rows)
    want = np.mean([accuracy_score(y[:50], LogisticRegression(max_iter=100, random_state=42).fit(x[r], y[r])
                                   .predict(x[:50])) for r in rows])
    assert got["cls-acc"] == pytest.approx(want)
    labels = MiniBatchKMeans(4, batch_size=500, n_init="auto", random_state=7).fit(x).labels_
    assert M.clustering_scores(x, y, seed=7) == {"cluster-v": pytest.approx(v_measure_score(y, labels))}
    b = x + rng.normal(size=x.shape)
    cos = np.array([u @ v / np.linalg.norm(u) / np.linalg.norm(v) for u, v in zip(x, b, strict=True)])
    assert M.pair_scores(x, b, y % 2, positive=0)["pair-ap"] == pytest.approx(average_precision_score(y % 2 == 0, cos))
    assert M.sts_scores(x, b, y)["sts-spearman"] == pytest.approx(spearmanr(cos, y)[0])
    assert M.sts_scores(x, b, np.ones(200))["sts-spearman"] == 0.0  # undefined: 0, as the grid's metrics


def test_embedding_scores_takes_a_function_or_a_model(hf_dir, task_files):
    """The trainer's entry: no files, a function or a model + tokenizer, the model's mode kept."""
    from transformers import AutoModel, AutoTokenizer

    task = custom_task("tiny", task_files["train"], task_files["dev"], "sentence")
    data = M.prepare_embedding_data(task, load_task_data(task), samples_per_label=4, n_experiments=2,
                                    max_eval_samples=20)
    assert len(data.texts["validation.sentence"]) == 20 and data.types == ("classification", "clustering")
    model, tok = AutoModel.from_pretrained(hf_dir), AutoTokenizer.from_pretrained(hf_dir)
    model.train()
    from_model = M.embedding_scores(model, data, tokenizer=tok, max_seq_length=32, batch_size=7)
    assert model.training  # back in its mode
    from_function = M.embedding_scores(lambda texts: _mean_pool(hf_dir, texts), data)
    assert from_model == pytest.approx(from_function, abs=1e-6)
    assert set(from_model) == {"cls-acc", "cls-f1", "cluster-v"}
    cls = M.embedding_scores(model, data, tokenizer=tok, pooling="cls", max_seq_length=32)
    assert cls != from_model
    with pytest.raises(ValueError, match="tokenizer"):
        M.embedding_scores(model, data)
    with pytest.raises(ValueError, match="shape"):
        M.embedding_scores(lambda texts: np.zeros((1, 4)), data)


def test_glue_pair_tasks_know_their_positive_class():
    from datasets import Dataset, DatasetDict

    dd = DatasetDict({s: Dataset.from_dict({"sentence1": ["a", "b", "c"], "sentence2": ["a", "x", "c"],
                                            "label": [0, 1, 0]}) for s in ("train", "validation")})
    rte = M.prepare_embedding_data(get_task("rte"), dd)
    assert rte.types == ("pair_classification",) and rte.positive == 0  # entailment is RTE's label 0
    assert M.prepare_embedding_data(get_task("mrpc"), dd).positive == 1  # equivalent is MRPC's label 1
    with pytest.raises(TaskDataError, match="pair classification needs two classes"):
        M.default_types(get_task("mnli"))
    with pytest.raises(TaskDataError, match="type sts needs two text columns and graded scores"):
        M.prepare_embedding_data(get_task("rte"), dd, ["sts"])


# --------------------------------------------------------------------------- cache, models, summary
def test_a_rerun_only_scores_and_a_changed_model_is_encoded_again(tmp_path, hf_dir, task_files, monkeypatch):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(hf_dir, model)
    out = tmp_path / "results"
    args = [str(model), "--output_dir", str(out), *QUIET, *_custom(task_files, "--samples_per_label", "4")]
    first = E.evaluate_embeddings(E.EmbeddingEvaluationConfig(**vars(E.parser().parse_args(args))), log=lambda s: 0)
    assert first[0]["encoded"] > 0
    monkeypatch.setattr(E, "load_encoder", lambda *a: pytest.fail("the model was loaded for cached embeddings"))
    lines = []
    again = E.evaluate_embeddings(E.EmbeddingEvaluationConfig(**vars(E.parser().parse_args(args))), log=lines.append)
    assert again[0]["encoded"] == 0 and again[0]["metrics"] == first[0]["metrics"]
    assert "all embeddings cached" in lines[0]
    # settings that do not change the texts or how they are embedded: still no encoding
    assert E.main([*args, "--batch_size", "5", "--aggregation", "mean"]) == 0
    monkeypatch.undo()
    # new weights at the same place: a new fingerprint, so new embeddings (the old ones are removed)
    from transformers import AutoModel

    m = AutoModel.from_pretrained(model)
    m.embeddings.word_embeddings.weight.data += 1.0
    m.save_pretrained(model)
    third = E.evaluate_embeddings(E.EmbeddingEvaluationConfig(**vars(E.parser().parse_args(args))), log=lambda s: 0)
    assert third[0]["encoded"] == first[0]["encoded"]
    run = Path(third[0]["run_dir"])
    assert len(list((run / "embeddings").glob("validation.sentence.*.npy"))) == 1


def test_sentence_transformers_and_plain_directories(tmp_path, hf_dir, st_dir, task_files):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "results"
    assert E.main([str(st_dir), str(hf_dir), "--model_names", "st", "hf", "--output_dir", str(out), *QUIET,
                   *_custom(task_files)]) == 0
    dev = pd.read_csv(task_files["dev"]).sentence.tolist()
    st_emb = _cached(out / "st" / "tiny" / "embeddings_st_len32", "validation.sentence")
    want = SentenceTransformer(str(st_dir), device="cpu").encode(dev, convert_to_numpy=True)
    np.testing.assert_allclose(st_emb, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(st_emb, axis=1), 1.0, atol=1e-5)  # its Normalize module
    hf_emb = _cached(out / "hf" / "tiny" / "embeddings_mean_len32", "validation.sentence")
    # the same transformer: mean pooling then normalising gives the sentence-transformers embeddings
    np.testing.assert_allclose(hf_emb / np.linalg.norm(hf_emb, axis=1, keepdims=True), st_emb, atol=1e-5)
    # --pooling mean / cls on a sentence-transformers directory use its transformer directly
    assert E.main([str(st_dir), "--model_names", "st", "--pooling", "cls", "--output_dir", str(out), *QUIET,
                   *_custom(task_files)]) == 0
    cls = _cached(out / "st" / "tiny" / "embeddings_cls_len32", "validation.sentence")
    assert cls.shape == st_emb.shape and not np.allclose(cls, hf_emb)


def test_the_summary_table_gains_the_embedding_columns(tmp_path, hf_dir, task_files, capsys):
    from distill.evaluation import cli

    out = tmp_path / "results"
    finetuned = out / "hf_model" / "cola" / "lr1e-05_ep3_seed42"
    finetuned.mkdir(parents=True)
    (finetuned / "metrics.json").write_text(json.dumps({"learning_rate": 1e-5, "epochs": 3, "seed": 42,
                                                        "metrics": {"mcc": 0.5}}))
    assert E.main([str(hf_dir), "--model_names", "hf_model", "--output_dir", str(out), *QUIET,
                   *_custom(task_files)]) == 0
    printed = capsys.readouterr().out
    assert "| model | cola | avg | tiny/cls-acc | tiny/cluster-v |" in printed  # the command prints the table
    result = json.loads((out / "hf_model" / "tiny" / "embeddings_mean_len32" / "metrics.json").read_text())
    table = create_summary_table(out)
    assert list(table.columns) == ["cola", "avg", "tiny/cls-acc", "tiny/cluster-v"]
    assert table.loc["hf_model", "avg"] == 50.0  # the fine-tuned tasks' average: embedding scores stay out of it
    assert table.loc["hf_model", "tiny/cls-acc"] == round(100 * result["metrics"]["cls-acc"], 2)
    assert table.attrs["hyperparameters"].loc["hf_model", "tiny/embeddings"] == "embeddings_mean_len32"
    every = summarize(out, metrics="all").scores
    assert list(every.columns) == ["cola/mcc", "avg", "tiny/cls-acc", "tiny/cls-f1", "tiny/cluster-v"]
    # a second run of the task (another length): best = the higher mean of the main scores; mean averages
    assert E.main([str(hf_dir), "--model_names", "hf_model", "--output_dir", str(out), *QUIET,
                   "--max_seq_length", "8", *_custom(task_files)]) == 0
    short = json.loads((out / "hf_model" / "tiny" / "embeddings_mean_len8" / "metrics.json").read_text())["metrics"]
    mean = create_summary_table(out, aggregation="mean", save=False)
    assert mean.loc["hf_model", "tiny/cluster-v"] == pytest.approx(
        50 * (result["metrics"]["cluster-v"] + short["cluster-v"]), abs=0.01)
    only = summarize(out, tasks=["tiny"]).scores
    assert list(only.columns) == ["tiny/cls-acc", "tiny/cluster-v"]  # no fine-tuned task: no avg
    # a hand-written embedding result is checked like the others
    bad = out / "hf_model" / "tiny" / "embeddings_mean_len8" / "metrics.json"
    bad.write_text(json.dumps({"kind": "embeddings", "metrics": {"cls-acc": 81.0}}))
    assert cli.main(["summary", str(out)]) == 2
    assert "metric 'cls-acc' = 81.0 is outside [0, 1]" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_are_refused_before_anything_is_written(tmp_path, hf_dir, task_files, capsys):
    out = tmp_path / "results"
    one_class = tmp_path / "one_class.csv"
    pd.DataFrame({"sentence": ["a", "b", "c"], "label": [1, 1, 1]}).to_csv(one_class, index=False)
    two_rows = tmp_path / "two_rows.csv"
    pd.DataFrame({"sentence": ["a", "b"], "label": ["x", "y"]}).to_csv(two_rows, index=False)
    dev_one_class = tmp_path / "dev_one_class.csv"
    pd.DataFrame({"sentence": ["a", "b"], "label": ["good", "good"]}).to_csv(dev_one_class, index=False)
    base = [str(hf_dir), "--output_dir", str(out), *QUIET]
    for args, message in [
        ([*_custom(task_files, "--label_field", "stars")], "missing column(s) ['stars']"),
        ([*_custom(task_files, "--label_field", "stars")], "--label_field"),
        (["--train_file", str(one_class), "--validation_file", str(task_files["dev"]), "--text_fields", "sentence"],
         "has 1 distinct value(s)"),
        (["--train_file", str(task_files["train"]), "--validation_file", str(dev_one_class), "--text_fields",
          "sentence"], "one class only ('good')"),
        (["--validation_file", str(two_rows), "--labels", "x", "y", "z", "--text_fields", "sentence"],
         "2 texts for 3 clusters"),
        (["--validation_file", str(task_files["dev"]), "--text_fields", "sentence", "--task_types", "classification"],
         "classification trains a probe on --train_file"),
        ([*_custom(task_files, "--task_types", "sts")], "label column 'label' must hold numbers"),
        (["--tasks", "mnli"], "pair classification needs two classes"),
        ([*_custom(task_files, "--samples_per_label", "-1")], "samples_per_label=-1 must be a positive integer"),
    ]:
        assert E.main([*base, *args]) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
    assert E.main([str(tmp_path / "no-such-model"), "--output_dir", str(out), *QUIET, *_custom(task_files)]) == 2
    err = capsys.readouterr().err
    assert f"model {tmp_path / 'no-such-model'}: no such directory; give a model directory" in err
    assert E.main([str(hf_dir), str(hf_dir), "--output_dir", str(out), *QUIET, *_custom(task_files)]) == 2
    assert "give --model_names" in capsys.readouterr().err
    assert E.main([*base, *_custom(task_files), "--max_seq_length", "128"]) == 2
    assert "longer than the model's 64 positions" in capsys.readouterr().err
    assert not out.exists()  # nothing was written


def test_an_unwritable_output_dir_is_refused_before_any_work(tmp_path, hf_dir, task_files, capsys, monkeypatch):
    monkeypatch.setattr(E, "load_task_data", lambda *a: pytest.fail("work done before the output_dir check"))
    args = [str(hf_dir), *QUIET, *_custom(task_files), "--output_dir"]
    assert_unwritable_outputs_refused(E.main, args, "output_dir", tmp_path, capsys, monkeypatch)


def test_flags_are_the_config_fields():
    p = E.parser("evaluate_embeddings.py")
    flags = {a.dest for a in p._actions if a.option_strings and a.dest != "help"}
    fields = set(E.EmbeddingEvaluationConfig.__dataclass_fields__) - {"models", "_"}
    assert flags == fields
    config = E.EmbeddingEvaluationConfig(**vars(p.parse_args(["a/m1", "b/m2/", "--samples_per_label", "0"])))
    assert config.models == ["a/m1", "b/m2/"] and config.model_names == ["m1", "m2"]
    assert config.samples_per_label is None and [t.name for t in config.tasks] == ["reviews"]
    assert config.output_dir == "./evaluation_results"  # the fine-tuning grid's results tree


# --------------------------------------------------------------------------- the real offline assets
def test_real_teacher_on_reviews(tmp_path, teacher_dir):
    """The shipped sentence-transformers teacher on a capped reviews task: a few seconds."""
    if not (ASSETS / "reviews" / "reviews.parquet").is_file():
        pytest.skip("reviews table not found: run `bash tools/fetch_offline_assets.sh`")
    records = E.evaluate_embeddings(teacher_dir, output_dir=tmp_path, max_eval_samples=48, samples_per_label=4,
                                    n_experiments=2, max_seq_length=64, progress_bar=False, log=lambda s: 0)
    (record,) = records
    assert record["model"] == "teacher" and record["task"] == "reviews"
    assert Path(record["run_dir"]).name == "embeddings_st_len64"  # its own pooling and normalisation
    assert set(record["metrics"]) == {"cls-acc", "cls-f1", "cluster-v"}
    assert record["metrics"]["cls-acc"] > 0.5  # better than chance on 48 dev reviews, 8 training ones a probe
    assert record["encoded"] <= 48 + 2 * 8  # the dev rows and the two experiments' train rows, nothing else


# --------------------------------------------------------------------------- damaged cache, inputs named twice
def test_a_damaged_cache_entry_is_encoded_again_with_a_note(tmp_path, hf_dir, task_files, capsys, one_thread):
    """A cached .npy that is still a valid array but holds other values does not match its checksum: re-encoded."""
    out = tmp_path / "results"
    args = [str(hf_dir), "--output_dir", str(out), *QUIET, "--validation_file", str(task_files["dev"]),
            "--text_fields", "sentence", "--task_name", "tiny", "--task_types", "clustering"]
    config = E.EmbeddingEvaluationConfig(**vars(E.parser().parse_args(args)))
    (first,) = E.evaluate_embeddings(config, log=lambda s: 0)
    run = Path(first["run_dir"])
    (path,) = (run / "embeddings").glob("validation.sentence.*.npy")
    right = np.load(path)
    assert Path(f"{path}.sha256").is_file() and (run / "settings.json.sha256").is_file()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert Path(f"{path}.sha256").read_text() == f"{digest}  {path.name}\n"  # sha256sum's format
    wrong = right.copy()
    wrong[0, 0] += 1.0
    np.save(path, wrong)  # still a valid .npy of the right shape
    capsys.readouterr()
    (again,) = E.evaluate_embeddings(config, log=lambda s: 0)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: {path} does not match its checksum ({path.name}.sha256): encoded again"]
    assert again["encoded"] == len(right) and again["metrics"] == first["metrics"]
    np.testing.assert_array_equal(np.load(path), right)  # replaced by the right values
    Path(f"{path}.sha256").unlink()  # no checksum: not trusted either
    (third,) = E.evaluate_embeddings(config, log=lambda s: 0)
    assert f"note: {path} has no checksum" in capsys.readouterr().err and third["encoded"] == len(right)
    (fourth,) = E.evaluate_embeddings(config, log=lambda s: 0)
    assert fourth["encoded"] == 0 and "note:" not in capsys.readouterr().err  # whole again: reused


def test_a_file_or_a_model_given_twice_is_refused(tmp_path, hf_dir, task_files, capsys):
    out = tmp_path / "results"
    twin = tmp_path / "twin"
    twin.symlink_to(hf_dir)
    assert E.main([str(hf_dir), str(twin), "--model_names", "a", "b", "--output_dir", str(out), *QUIET,
                   *_custom(task_files)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: models {hf_dir} and {twin} are the same directory: give each model once\n", err
    assert E.main([str(hf_dir), "--output_dir", str(out), *QUIET, "--train_file", str(task_files["dev"]),
                   "--validation_file", str(task_files["dev"]), "--text_fields", "sentence"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --train_file and --validation_file are the same file") and "leave" in err, err
    assert E.main([str(hf_dir), "--output_dir", str(out), *QUIET, "--train_file", str(task_files["train"]),
                   "--text_fields", "sentence"]) == 2
    err = capsys.readouterr().err
    assert "no --validation_file given" in err and "None" not in err, err
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    assert E.main([str(no_config), "--output_dir", str(out), *QUIET, *_custom(task_files)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {no_config} has no config.json: give an exported model")
    assert not out.exists()
