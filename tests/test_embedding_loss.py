"""The optional embedding loss: pooling, the loss values and gradients by hand, the objective's term."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from distill.embedding_loss import PROJECTION_ATTRIBUTE, EmbeddingProjection, EmbeddingSpec, embedding_loss, pool
from distill.objective import MiniLMv2Objective
from distill.student import create_student
from distill.teacher import FrozenTeacher


def _batch(seed=0, b=3, s=7, h=5):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, s, h, generator=g, dtype=torch.float64)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 1:] = 0
    return hidden, mask


def test_pooling_modes_by_hand():
    hidden, mask = _batch()
    x, m = hidden.numpy(), mask.numpy().astype(bool)
    mean = np.stack([x[i][m[i]].mean(axis=0) for i in range(3)])
    biggest = np.stack([x[i][m[i]].max(axis=0) for i in range(3)])
    np.testing.assert_allclose(pool(hidden, mask, "mean").numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(pool(hidden, mask, "max").numpy(), biggest, rtol=1e-12)
    np.testing.assert_array_equal(pool(hidden, mask, "cls").numpy(), x[:, 0])


def test_an_all_padding_row_pools_to_zeros_not_nan():
    hidden, mask = _batch()
    mask[0] = 0
    for mode in ("mean", "max"):
        out = pool(hidden, mask, mode)
        assert torch.isfinite(out).all() and torch.equal(out[0], torch.zeros(5, dtype=hidden.dtype))
    with pytest.raises(ValueError, match="pooling mode 'sum' is unknown"):
        pool(hidden, mask, "sum")


def test_mse_value_and_gradient_by_hand():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4, 6, generator=g, dtype=torch.float64)
    t = torch.randn(4, 6, generator=g, dtype=torch.float64)
    student = s.clone().float().requires_grad_()
    loss = embedding_loss(student, t.float(), "mse")
    loss.backward()
    diff = s.numpy() - t.numpy()
    np.testing.assert_allclose(loss.item(), (diff ** 2).mean(), rtol=1e-6)
    np.testing.assert_allclose(student.grad.numpy(), 2 * diff / diff.size, rtol=1e-5, atol=1e-8)


def test_cosine_value_and_gradient_by_hand():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(4, 6, generator=g, dtype=torch.float64)
    t = torch.randn(4, 6, generator=g, dtype=torch.float64)
    student = s.clone().float().requires_grad_()
    loss = embedding_loss(student, t.float(), "cosine")
    loss.backward()
    a, b = s.numpy(), t.numpy()
    na, nb = np.linalg.norm(a, axis=1, keepdims=True), np.linalg.norm(b, axis=1, keepdims=True)
    cos = (a * b).sum(axis=1, keepdims=True) / (na * nb)
    np.testing.assert_allclose(loss.item(), (1 - cos).mean(), rtol=1e-6)
    # d(1 - cos)/da = -(b / (|a||b|) - cos * a / |a|^2), averaged over the 4 rows
    grad = -(b / (na * nb) - cos * a / na ** 2) / 4
    np.testing.assert_allclose(student.grad.numpy(), grad, rtol=1e-5, atol=1e-7)


def test_the_teacher_is_a_constant_and_shapes_must_agree():
    s = torch.randn(2, 4, requires_grad=True)
    t = torch.randn(2, 4, requires_grad=True)
    embedding_loss(s, t, "mse").backward()
    assert t.grad is None and s.grad is not None
    with pytest.raises(ValueError, match="project the student's to the teacher's width"):
        embedding_loss(torch.randn(2, 3), torch.randn(2, 4), "cosine")
    with pytest.raises(ValueError, match="choose mse or cosine"):
        embedding_loss(s, t, "kl")


def test_the_projection_starts_as_the_leading_identity():
    proj = EmbeddingProjection(3, 5)
    x = torch.randn(2, 3)
    torch.testing.assert_close(proj(x), torch.cat([x, torch.zeros(2, 2)], dim=1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss="none", weight=1.0, pooling="mean"), "choose mse or cosine"),
    (dict(loss="mse", weight=0.0, pooling="mean"), "must be a finite number > 0"),
    (dict(loss="mse", weight=float("nan"), pooling="mean"), "must be a finite number > 0"),
    (dict(loss="mse", weight=1.0, pooling="sum"), "choose one of mean, cls, max"),
])
def test_spec_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EmbeddingSpec(**kwargs)


def _models(student_width=16):
    torch.manual_seed(0)
    teacher = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0))
    frozen = FrozenTeacher(teacher, 2, device="cpu", run_to_end=True)
    student = create_student(frozen.model, 2, student_width, 2).eval()
    return teacher, frozen, student


def test_objective_adds_the_weighted_term_on_the_teachers_last_layer():
    teacher, frozen, student = _models()
    assert frozen.num_layers == 3 and len(frozen.model.encoder.layer) == 3  # nothing dropped: the last layer runs
    student.add_module(PROJECTION_ATTRIBUTE, EmbeddingProjection(16, 32))
    spec = EmbeddingSpec("cosine", 0.5, "mean")
    with_term = MiniLMv2Objective(frozen, student, num_relation_heads=4, relations="qq:1", embedding=spec)
    ids = torch.randint(5, 99, (2, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    loss, parts = with_term({"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        t_vec = pool(teacher(input_ids=ids, attention_mask=mask).last_hidden_state, mask, "mean")
        s_vec = getattr(student, PROJECTION_ATTRIBUTE)(pool(student(input_ids=ids, attention_mask=mask)
                                                            .last_hidden_state, mask, "mean"))
    expected = (1 - torch.nn.functional.cosine_similarity(s_vec, t_vec, dim=-1)).mean()
    torch.testing.assert_close(parts["embedding"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, parts["qq"] + 0.5 * parts["embedding"], rtol=1e-6, atol=1e-7)
    loss.backward()
    assert getattr(student, PROJECTION_ATTRIBUTE).weight.grad.abs().sum() > 0


def test_objective_refuses_what_cannot_give_the_term():
    teacher, frozen, student = _models()
    spec = EmbeddingSpec("mse", 1.0, "cls")
    with pytest.raises(ValueError, match="register an EmbeddingProjection"):
        MiniLMv2Objective(frozen, student, num_relation_heads=4, relations="qq:1", embedding=spec)
    stopped = FrozenTeacher(BertModel(teacher.config), 2, device="cpu")
    with pytest.raises(ValueError, match="run_to_end=True"):
        MiniLMv2Objective(stopped, student, num_relation_heads=4, relations="qq:1", embedding=spec)
    with pytest.raises(ValueError, match="return_hidden needs the whole forward"):
        stopped(torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long), return_hidden=True)
