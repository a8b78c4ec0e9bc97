"""The embedding loss and --eval_steps in real 2-rank DeepSpeed runs (gloo, CPU) from a tiny sentence-transformers
teacher: logged scalars, resume equal to a straight run, the projection exported as a Dense module; bad input."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from helpers import WORDS
from test_distill_run import ENV, distill_args, run_deepspeed, run_python, scalars
from test_distill_run import tiny as tiny_fixture  # noqa: F401 (the `tiny` fixture, shared)

# multi-process runs and five launches, about a minute: `make test-extended` (CI)
pytestmark = [pytest.mark.slow, pytest.mark.extended]
pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def st_tiny(tiny_fixture):  # noqa: F811 (the imported fixture)
    """`tiny` (a BERT teacher, shards) plus the same teacher as a sentence-transformers model (mean pooling,
    Normalize) and a labelled two-class file for --eval_task."""
    from sentence_transformers import SentenceTransformer, models

    tiny = tiny_fixture
    transformer = models.Transformer(str(tiny / "teacher"), max_seq_length=32)
    st = SentenceTransformer(modules=[transformer, models.Pooling(32, pooling_mode="mean"), models.Normalize()],
                             device="cpu")
    st.save(str(tiny / "st_teacher"))
    rng = random.Random(1)
    left, right = WORDS[:60], WORDS[60:120]  # two classes told apart by their words
    rows = ["text,label"] + [f"{' '.join(rng.choice(words) for _ in range(8))},{label}"
                             for _ in range(40) for label, words in (("a", left), ("b", right))]
    (tiny / "eval.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return tiny


def embedding_args(tiny, out, **overrides):
    settings = dict(teacher=tiny / "st_teacher", embedding_loss="cosine", embedding_loss_weight=0.5,
                    eval_steps=4, eval_task=tiny / "eval.csv", eval_samples=24, max_steps=8, save_steps=4,
                    logging_steps=2)
    settings.update(overrides)
    return distill_args(tiny, out, **settings)


@pytest.fixture(scope="module")
def embedding_run(st_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("emb") / "out"
    return out, run_deepspeed(embedding_args(st_tiny, out))


def test_the_embedding_loss_and_the_scores_are_logged_and_the_projection_exported(embedding_run):
    from sentence_transformers import SentenceTransformer

    out, proc = embedding_run
    text = proc.stdout + proc.stderr
    assert "embedding loss: the teacher runs all 3 layers" in text
    assert "eval step 0 (the undistilled student)" in text and "eval step 8" in text
    logged = scalars(out)
    assert [s for s, _ in logged["loss/embedding"]] == [2, 4, 6, 8]
    assert all(0 <= v <= 2 for _, v in logged["loss/embedding"])
    parts = ("loss/qq", "loss/kk", "loss/vv")
    for (_, total), *rest in zip(logged["loss/total"], *(logged[p] for p in parts), logged["loss/embedding"],
                                 strict=True):
        *relations, emb = (v for _, v in rest)
        assert abs(total - (sum(relations) + 0.5 * emb)) < 1e-4 * max(1.0, total)
    for score in ("cls-acc", "cls-f1", "cluster-v"):
        steps = [s for s, _ in logged[f"eval/eval/{score}"]]
        assert steps == [0, 4, 8], (score, steps)
    student = SentenceTransformer(str(out / "student"), device="cpu")
    kinds = [type(m).__name__ for m in student]
    assert kinds == ["Transformer", "Pooling", "Dense", "Normalize"], kinds
    vectors = student.encode(["the water is long", "two boys play"])
    assert vectors.shape == (2, 32)  # the teacher's width, through the learned projection
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_a_resumed_embedding_run_ends_where_the_straight_one_does(st_tiny, embedding_run, tmp_path):
    from safetensors.torch import load_file

    out, _ = embedding_run
    resumed = tmp_path / "resumed"
    proc = run_deepspeed(embedding_args(st_tiny, resumed, resume=out / "checkpoints" / "step-00000004"))
    assert "eval step 0" not in proc.stdout + proc.stderr  # the baseline belongs to the fresh run
    for name in ("model.safetensors", "2_Dense/model.safetensors"):
        a, b = load_file(out / "student" / name), load_file(resumed / "student" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert scalars(resumed)["eval/eval/cls-acc"] == [(s, v) for s, v in scalars(out)["eval/eval/cls-acc"] if s == 8]


@pytest.mark.parametrize("overrides, message", [
    (dict(teacher="{tiny}/teacher", eval_steps=0), "--embedding_loss cosine needs a pooling"),
    (dict(eval_task="{tiny}/missing.csv"), "--eval_task {tiny}/missing.csv: neither 'reviews' nor a file"),
    (dict(eval_task="{tiny}/one_class.csv"), "label column 'label' has 1 distinct value(s)"),
    (dict(embedding_loss="l2"), "--embedding_loss 'l2': choose none, mse, cosine"),
])
def test_bad_embedding_settings_are_refused_before_anything_is_written(st_tiny, tmp_path, overrides, message):
    (st_tiny / "one_class.csv").write_text("text,label\n" + "the water,a\n" * 30, encoding="utf-8")
    out = tmp_path / "bad"
    settings = {k: str(v).format(tiny=st_tiny) for k, v in overrides.items()}
    proc = run_python(embedding_args(st_tiny, out, **settings), env=ENV)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: " in proc.stderr and message.format(tiny=st_tiny) in proc.stderr, proc.stderr[-3000:]
    assert not out.exists()
