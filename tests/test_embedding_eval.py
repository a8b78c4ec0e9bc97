"""distill.evaluation.embeddings / embedding_eval: MTEB scores the frozen embeddings (`mteb.evaluate` on local tasks
and MTEB's own by name), the cache, the results tree and the summary's columns, sentence-transformers and plain
Hugging Face directories, bad input."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ASSETS, WORDS, save_tiny_teacher
from mteb_reference import mean_pooling_st, mteb_numbers, mteb_task
from unwritable import assert_unwritable_outputs_refused

from distill.evaluation import embedding_eval as E
from distill.evaluation import embeddings as M
from distill.evaluation.summary import create_summary_table, summarize
from distill.evaluation.tasks import TaskDataError, custom_task, get_task, load_task_data

pytest.importorskip("mteb")
QUIET = ["--no-progress_bar", "--max_seq_length", "32", "--batch_size", "16", "--n_experiments", "2"]  # quick


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A plain Hugging Face BERT directory (3 layers, width 32) with the tiny tokenizer."""
    return save_tiny_teacher(tmp_path_factory.mktemp("hf_model"), tiny_tokenizer_dir, seed=1)


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory, hf_dir) -> Path:
    """A sentence-transformers directory: that BERT, mean pooling, normalisation."""
    return mean_pooling_st(hf_dir, tmp_path_factory.mktemp("st_model") / "st", normalize=True)


@pytest.fixture(scope="module")
def st_mean(tmp_path_factory, hf_dir):
    """That BERT with masked-mean pooling and no normalisation, as a SentenceTransformer: `--pooling mean`'s
    embeddings, given to MTEB as MTEB takes a sentence-transformers model."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(mean_pooling_st(hf_dir, tmp_path_factory.mktemp("st_mean") / "st")), device="cpu")


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


def _metrics(out: Path, model: str, task: str, run: str = "embeddings_mean_len32") -> dict:
    return json.loads((out / model / task / run / "metrics.json").read_text())


def _cached(run_dir: Path, split: str) -> list[np.ndarray]:
    """The run's cached embeddings of one split (one array per MTEB encode call)."""
    return [np.load(p) for p in sorted((run_dir / "embeddings").glob(f"default.{split}.*.npy"))]


def _reference_tasks(files) -> dict[str, list]:
    """MTEB's tasks of the test's files, built here (labels as ids in sorted order, as the command numbers them)."""
    dev, train = pd.read_csv(files["dev"]), pd.read_csv(files["train"])
    ids = {"bad": 0, "good": 1, "meh": 2}
    single = {"train": {"text": train.sentence.tolist(), "label": train.label.map(ids).tolist()},
              "validation": {"text": dev.sentence.tolist(), "label": dev.label.map(ids).tolist()}}
    pairs, sts = pd.read_json(files["pairs"], lines=True), pd.read_parquet(files["sts"])

    def pair_rows(positive):
        return {"validation": {"sentence1": pairs.q1.tolist(), "sentence2": pairs.q2.tolist(),
                               "labels": (pairs.dup == positive).astype(int).tolist()}}
    return {
        "tiny": [mteb_task("Classification", single, samples_per_label=5, n_experiments=3),
                 mteb_task("Clustering", {"validation": {"sentences": dev.sentence.tolist(),
                                                         "labels": dev.label.map(ids).tolist()}},
                           max_fraction_of_documents_to_embed=None, max_documents_per_cluster=len(dev))],
        "pairs": [mteb_task("PairClassification", pair_rows("yes"))],
        "pairs-no": [mteb_task("PairClassification", pair_rows("no"))],
        "sts": [mteb_task("STS", {"validation": {"sentence1": sts.q1.tolist(), "sentence2": sts.q2.tolist(),
                                                 "score": sts.score.tolist()}},
                          min_score=float(sts.score.min()), max_score=float(sts.score.max()))],
    }


# --------------------------------------------------------------------------- the scores are MTEB's
def test_the_command_gives_mteb_evaluate_s_numbers_on_the_same_local_tasks(tmp_path, hf_dir, st_mean, task_files,
                                                                          capsys):
    """Classification, clustering (CSV), pair classification (JSON lines, either class positive) and STS (parquet):
    the command's scores equal `mteb.evaluate` of the same rows on the same embeddings, to 1e-6."""
    out = tmp_path / "results"
    pair_args = ["--validation_file", str(task_files["pairs"]), "--text_fields", "q1", "q2", "--label_field", "dup"]
    for args in (_custom(task_files, "--samples_per_label", "5", "--n_experiments", "3"),
                 [*pair_args, "--task_name", "pairs"],  # two text columns, two classes: "yes" (sorted 2nd) positive
                 [*pair_args, "--task_name", "pairs-no", "--positive_label", "no"],
                 ["--validation_file", str(task_files["sts"]), "--text_fields", "q1", "q2", "--label_field", "score",
                  "--task_name", "sts", "--task_types", "sts"]):
        assert E.main([str(hf_dir), "--output_dir", str(out), *QUIET, *args]) == 0
    assert "tiny: cls-acc" in capsys.readouterr().out
    for task, reference in _reference_tasks(task_files).items():
        result = _metrics(out, hf_dir.name, task)
        want = mteb_numbers(st_mean, reference)
        assert result["metrics"] == pytest.approx(want, abs=1e-6), task
        assert list(result["metrics"]) == result["metric_keys"]
    tiny = _metrics(out, hf_dir.name, "tiny")
    assert tiny["types"] == ["classification", "clustering"] and tiny["examples"] == {"validation": 30, "train": 60}
    assert (tiny["samples_per_label"], tiny["n_experiments"], tiny["seed"]) == (5, 3, 42)
    assert _metrics(out, hf_dir.name, "pairs")["types"] == ["pair_classification"]
    # the embeddings MTEB was given: masked mean pooling of the texts, in file order
    dev = pd.read_csv(task_files["dev"]).sentence.tolist()
    (x_dev,) = _cached(out / hf_dir.name / "tiny" / "embeddings_mean_len32", "validation")  # encoded once for both
    np.testing.assert_allclose(x_dev, st_mean.encode(dev), atol=1e-5)


def test_embedding_scores_takes_a_model_a_function_or_a_sentence_transformer(hf_dir, st_mean, task_files):
    """The trainer's entry: no files; a model + tokenizer (its mode kept), a function, a SentenceTransformer: the
    same MTEB scores; the global generators MTEB seeds are put back."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    task = custom_task("tiny", task_files["train"], task_files["dev"], "sentence")
    data = M.prepare_embedding_data(task, load_task_data(task), samples_per_label=4, n_experiments=2,
                                    max_eval_samples=20)
    assert data.examples == {"validation": 20, "train": 60} and data.types == ("classification", "clustering")
    model, tok = AutoModel.from_pretrained(hf_dir), AutoTokenizer.from_pretrained(hf_dir)
    model.train()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    before = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    from_model = M.embedding_scores(model, data, tokenizer=tok, max_seq_length=32, batch_size=7)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == before  # MTEB seeded them; put back
    assert model.training  # back in its mode
    assert set(from_model) == {"cls-acc", "cls-f1", "cluster-v"}
    assert M.embedding_scores(model, data, tokenizer=tok, max_seq_length=32) == from_model  # the same draws again
    from_st = M.embedding_scores(st_mean, data)
    assert from_st == pytest.approx(from_model, abs=1e-6)
    from_function = M.embedding_scores(lambda texts: st_mean.encode(texts), data)
    assert from_function == pytest.approx(from_model, abs=1e-6)
    cls = M.embedding_scores(model, data, tokenizer=tok, pooling="cls", max_seq_length=32)
    assert cls != from_model
    with pytest.raises(ValueError, match="tokenizer"):
        M.embedding_scores(model, data)
    with pytest.raises(ValueError, match="shape"):
        M.embedding_scores(lambda texts: np.zeros((1, 4)), data)


def test_every_row_is_one_experiment_on_the_whole_train_split(hf_dir, st_mean, task_files):
    """samples_per_label None (the command's 0, the --eval_steps probe): MTEB with one experiment on every row."""
    task = custom_task("tiny", task_files["train"], task_files["dev"], "sentence")
    data = M.prepare_embedding_data(task, load_task_data(task), ["classification"], samples_per_label=None)
    train, dev = pd.read_csv(task_files["train"]), pd.read_csv(task_files["dev"])
    ids = {"bad": 0, "good": 1, "meh": 2}
    rows = {"train": {"text": train.sentence.tolist(), "label": train.label.map(ids).tolist()},
            "validation": {"text": dev.sentence.tolist(), "label": dev.label.map(ids).tolist()}}
    want = mteb_numbers(st_mean, [mteb_task("Classification", rows, samples_per_label=60, n_experiments=1)])
    assert M.embedding_scores(st_mean, data) == pytest.approx(want, abs=1e-6)


def test_glue_pair_tasks_know_their_positive_class():
    from datasets import Dataset, DatasetDict

    dd = DatasetDict({s: Dataset.from_dict({"sentence1": ["a", "b", "c"], "sentence2": ["a", "x", "c"],
                                            "label": [0, 1, 0]}) for s in ("train", "validation")})
    rte = M.prepare_embedding_data(get_task("rte"), dd)
    assert rte.types == ("pair_classification",)  # entailment is RTE's label 0: MTEB's similar (1)
    assert rte.datasets["pair_classification"]["validation"]["labels"] == [1, 0, 1]
    mrpc = M.prepare_embedding_data(get_task("mrpc"), dd)  # equivalent is MRPC's label 1
    assert mrpc.datasets["pair_classification"]["validation"]["labels"] == [0, 1, 0]
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
    run = Path(first[0]["run_dir"])
    entries = sorted(p.name for p in (run / "embeddings").glob("*.npy"))
    assert {n.split(".")[1] for n in entries} == {"train", "validation"}
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
    now = sorted(p.name for p in (run / "embeddings").glob("*.npy"))
    assert len(now) == len(entries) and not set(now) & set(entries)  # the old model's entries are removed
    assert sorted(p.name for p in (run / "embeddings").glob("*.sha256")) == [f"{n}.sha256" for n in now]


def test_sentence_transformers_and_plain_directories(tmp_path, hf_dir, st_dir, task_files):
    """A sentence-transformers directory goes to MTEB through MTEB's own wrapper: the scores `mteb.evaluate` gives
    the SentenceTransformer itself."""
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "results"
    assert E.main([str(st_dir), str(hf_dir), "--model_names", "st", "hf", "--output_dir", str(out), *QUIET,
                   *_custom(task_files)]) == 0
    st = SentenceTransformer(str(st_dir), device="cpu")
    reference = _reference_tasks(task_files)["tiny"]
    for task in reference:
        if hasattr(task, "samples_per_label"):
            task.samples_per_label, task.n_experiments = 8, 2  # the default (MTEB's), QUIET's
    assert _metrics(out, "st", "tiny", "embeddings_st_len32")["metrics"] == pytest.approx(
        mteb_numbers(st, reference), abs=1e-6)
    dev = pd.read_csv(task_files["dev"]).sentence.tolist()
    (st_emb,) = _cached(out / "st" / "tiny" / "embeddings_st_len32", "validation")
    np.testing.assert_allclose(st_emb, st.encode(dev, convert_to_numpy=True), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(st_emb, axis=1), 1.0, atol=1e-5)  # its Normalize module
    (hf_emb,) = _cached(out / "hf" / "tiny" / "embeddings_mean_len32", "validation")
    # the same transformer: mean pooling then normalising gives the sentence-transformers embeddings
    np.testing.assert_allclose(hf_emb / np.linalg.norm(hf_emb, axis=1, keepdims=True), st_emb, atol=1e-5)
    # --pooling mean / cls on a sentence-transformers directory use its transformer directly
    assert E.main([str(st_dir), "--model_names", "st", "--pooling", "cls", "--output_dir", str(out), *QUIET,
                   *_custom(task_files)]) == 0
    (cls,) = _cached(out / "st" / "tiny" / "embeddings_cls_len32", "validation")
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
        (["--validation_file", str(task_files["dev"]), "--text_fields", "sentence", "--task_types", "classification"],
         "classification trains a probe on --train_file"),
        ([*_custom(task_files, "--task_types", "sts")], "label column 'label' must hold numbers"),
        (["--tasks", "mnli"], "pair classification needs two classes"),
        ([*_custom(task_files, "--samples_per_label", "-1")], "samples_per_label=-1 must be a positive integer"),
        (["--mteb_tasks", "NoSuchTaskAtAll"], "--mteb_tasks NoSuchTaskAtAll: not an MTEB task"),
        (["--mteb_tasks", "SciFact"], "--mteb_tasks SciFact: a Retrieval task; the scores here are text "
                                      "classification, clustering, pair classification and STS"),
        ([*_custom(task_files), "--task_name", "STS12", "--mteb_tasks", "STS12"],
         "task 'STS12' is both one of distill's (--tasks, --task_name) and one of MTEB's (--mteb_tasks)"),
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


def test_mteb_task_names_are_checked_before_any_model_is_read_and_their_data_needs_the_hub(tmp_path, hf_dir, capsys,
                                                                                             monkeypatch):
    import datasets
    import huggingface_hub.constants

    out = tmp_path / "results"
    args = [str(hf_dir), "--output_dir", str(out), *QUIET, "--mteb_tasks"]
    monkeypatch.setattr(E, "_check_model", lambda *a: pytest.fail("a model was read before the names were checked"))
    assert E.main([*args, "Banking77Classification", "NoSuchTaskAtAll"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --mteb_tasks NoSuchTaskAtAll: not an MTEB task") and err.count("\n") == 1, err
    monkeypatch.undo()
    # a known task, the hub out of reach (the libraries read HF_HUB_OFFLINE when imported: set where they keep it)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "no_datasets_cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "no_hub_cache"))
    monkeypatch.setattr(E, "load_encoder", lambda *a: pytest.fail("the model was loaded"))
    assert E.main([*args, "Banking77Classification"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MTEB task Banking77Classification: its data could not be downloaded from the "
                          "Hugging Face hub (ConnectionError") and "unset HF_HUB_OFFLINE" in err, err
    assert not out.exists()


def test_an_mteb_task_by_name_goes_to_the_results_tree_and_the_summary(tmp_path, hf_dir, st_mean, task_files,
                                                                        monkeypatch):
    """Banking77Classification with its data replaced (no hub here): run as MTEB defines it (its test split, its
    samples_per_label and n_experiments), scored as `mteb.evaluate` scores it, beside a local task in the table."""
    import mteb
    from datasets import Dataset, DatasetDict

    train, dev = pd.read_csv(task_files["train"]), pd.read_csv(task_files["dev"])
    rows = DatasetDict(train=Dataset.from_dict({"text": train.sentence.tolist(), "label": train.label.tolist()}),
                       test=Dataset.from_dict({"text": dev.sentence.tolist(), "label": dev.label.tolist()}))

    def load_data(self, num_proc=None, **kwargs):
        self.dataset, self.data_loaded = rows, True
    monkeypatch.setattr(type(mteb.get_task("Banking77Classification")), "load_data", load_data)
    out = tmp_path / "results"
    assert E.main([str(hf_dir), "--model_names", "hf", "--output_dir", str(out), *QUIET, "--samples_per_label", "3",
                   *_custom(task_files), "--mteb_tasks", "Banking77Classification"]) == 0
    result = _metrics(out, "hf", "Banking77Classification")
    assert result["mteb_task"] == "Banking77Classification" and result["types"] == ["classification"]
    assert (result["samples_per_label"], result["n_experiments"], result["examples"]) == (8, 10, {"test": 30})
    task = mteb.get_task("Banking77Classification")
    task.load_data()
    want = mteb.evaluate(st_mean, [task], cache=None, co2_tracker=False, show_progress_bar=False).task_results[0]
    assert result["metrics"] == pytest.approx({"cls-acc": want.get_score(getter=lambda s: s["accuracy"]),
                                               "cls-f1": want.get_score(getter=lambda s: s["f1"])}, abs=1e-6)
    table = create_summary_table(out, save=False)
    assert list(table.columns) == ["Banking77Classification/cls-acc", "tiny/cls-acc", "tiny/cluster-v"]
    assert _metrics(out, "hf", "tiny")["samples_per_label"] == 3  # the flags are for distill's tasks


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
    assert config.mteb_tasks == []
    mteb_only = E.EmbeddingEvaluationConfig(**vars(p.parse_args(["m", "--mteb_tasks", "STS12", "STS12"])))
    assert mteb_only.tasks == [] and mteb_only.mteb_tasks == ["STS12"]  # MTEB's tasks only, each once


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
    assert record["encoded"] <= 48 + 2 * 8  # the dev rows (once for both types) and the experiments' train rows


# --------------------------------------------------------------------------- damaged cache, inputs named twice
def test_a_damaged_cache_entry_is_encoded_again_with_a_note(tmp_path, hf_dir, task_files, capsys, one_thread):
    """A cached .npy that is still a valid array but holds other values does not match its checksum: re-encoded."""
    out = tmp_path / "results"
    args = [str(hf_dir), "--output_dir", str(out), *QUIET, "--validation_file", str(task_files["dev"]),
            "--text_fields", "sentence", "--task_name", "tiny", "--task_types", "clustering"]
    config = E.EmbeddingEvaluationConfig(**vars(E.parser().parse_args(args)))
    (first,) = E.evaluate_embeddings(config, log=lambda s: 0)
    run = Path(first["run_dir"])
    (path,) = (run / "embeddings").glob("default.validation.*.npy")
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
