"""The relation loss: both implementations against float64 references, the published per-example
loop, half precision, padding edge cases, memory discipline of the chunked Function, and errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.relations import parse_relations, relation_loss, relation_name

QKV = {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}
MIXED = {(1, 1): 1.0, (1, 2): 0.5, (2, 3): 2.0, (3, 3): 0.25}
HEADS = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def make_inputs(lengths, seq, *, t_width=32, s_width=16, seed=0, scale=1.0, dtype=torch.float32):
    """Teacher and student (q, k, v) [B, S, H] and a right-padded mask with the given valid lengths."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    teacher = tuple((scale * torch.randn(batch, seq, t_width, generator=gen)).to(dtype) for _ in range(3))
    student = tuple((scale * torch.randn(batch, seq, s_width, generator=gen)).to(dtype).requires_grad_()
                    for _ in range(3))
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    return teacher, student, mask


def split_heads(x, heads):
    b, s, h = x.shape
    return x.reshape(b, s, heads, h // heads).transpose(1, 2)       # (B, A, S, d)


def reference64(teacher, student, mask, heads, relations):
    """The docs/design.md definition in float64 with true -inf masking, vectorised over the batch."""
    batch = mask.shape[0]
    keep = mask.sum(1) > 0                                           # all-padding examples add 0 (but count in B)
    valid = mask[keep].bool()
    lengths = valid.sum(1).double()
    total = torch.zeros((), dtype=torch.float64)
    for (m, n), weight in relations.items():
        def log_probs(x_m, x_n):
            q, k = split_heads(x_m[keep].double(), heads), split_heads(x_n[keep].double(), heads)
            z = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])     # (B', A, S, S)
            return torch.log_softmax(z.masked_fill(~valid[:, None, None, :], -math.inf), dim=-1)
        log_t = log_probs(teacher[m - 1], teacher[n - 1]).detach()
        log_s = log_probs(student[m - 1], student[n - 1])
        kl = torch.where(valid[:, None, None, :], log_t.exp() * (log_t - log_s), 0.0).sum(-1)   # (B', A, S)
        per_example = (kl * valid[:, None, :]).sum((1, 2)) / (heads * lengths)
        total = total + weight * per_example.sum() / batch
    return total


def published_loop(teacher, student, mask, heads, relations):
    """The bertdistiller / minilmv2.bb recipe: per example, slice to its length, KL per head, / (heads * length)."""
    batch = mask.shape[0]
    total = torch.zeros((), dtype=torch.float64)
    for (m, n), weight in relations.items():
        relation = torch.zeros((), dtype=torch.float64)
        for b in range(batch):
            length = int(mask[b].sum())
            if length == 0:
                continue

            def attention(x_m, x_n, b=b, length=length):
                q = split_heads(x_m[b:b + 1, :length].double(), heads)[0]   # (A, n, d)
                k = split_heads(x_n[b:b + 1, :length].double(), heads)[0]
                return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])    # (A, n, n)
            target = torch.softmax(attention(teacher[m - 1], teacher[n - 1]).detach(), dim=-1)
            log_pred = torch.log_softmax(attention(student[m - 1], student[n - 1]), dim=-1)
            relation = relation + F.kl_div(log_pred, target, reduction="sum") / (heads * length)
        total = total + weight * relation / batch
    return total


def loss_and_grads(teacher, student, mask, relations, chunk_size, heads=HEADS):
    total, parts = relation_loss(teacher, student, mask, num_relation_heads=heads, relations=relations,
                                 chunk_size=chunk_size)
    return total, parts, torch.autograd.grad(total, student, allow_unused=True, materialize_grads=True)


def assert_close_to_64(total, grads, ref_total, ref_grads, rtol=2e-5):
    assert total.dtype == torch.float32 and total.dim() == 0
    torch.testing.assert_close(total.double(), ref_total, rtol=rtol, atol=1e-7)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.isfinite(g).all()
        scale = r.abs().max().item()
        torch.testing.assert_close(g.double(), r.double(), rtol=0, atol=rtol * scale)


LENGTHS = [13, 1, 9, 1, 4]    # right padding with examples of valid length 1


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 5, 13, 64])
@pytest.mark.parametrize("relations", [QKV, MIXED], ids=["qkv", "mixed"])
def test_matches_float64_reference(chunk_size, relations):
    teacher, student, mask = make_inputs(LENGTHS, 13, seed=1)
    total, parts, grads = loss_and_grads(teacher, student, mask, relations, chunk_size)
    ref = reference64(teacher, student, mask, HEADS, relations)
    ref_grads = torch.autograd.grad(ref, student)
    assert_close_to_64(total, grads, ref, ref_grads)
    assert ref.item() > 0.05     # the inputs carry signal: not a trivially zero loss


@pytest.mark.parametrize("chunk_size", [3, 7, 16, 29, 200])
def test_chunked_equals_reference(chunk_size):
    # chunk sizes that divide S = 29 or not, and >= S; cross relations and m == n
    teacher, student, mask = make_inputs([29, 17, 1, 22], 29, t_width=48, s_width=24, seed=2)
    relations = {(1, 2): 1.0, (2, 3): 0.7, (1, 1): 0.3, (3, 1): 1.0}
    ref_total, ref_parts, ref_grads = loss_and_grads(teacher, student, mask, relations, None)
    total, parts, grads = loss_and_grads(teacher, student, mask, relations, chunk_size)
    torch.testing.assert_close(total, ref_total, rtol=1e-5, atol=1e-7)
    assert parts.keys() == ref_parts.keys() == {"qk", "kv", "qq", "vq"}
    for name in parts:
        torch.testing.assert_close(parts[name], ref_parts[name], rtol=1e-5, atol=1e-7)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * r.abs().max().item())


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_same_tensor_gets_both_gradients(chunk_size):
    # (1, 1): the query is both sides of the relation; its gradient is the sum of the two paths
    teacher, student, mask = make_inputs([11, 6, 2], 11, seed=3)
    total, _, (grad_q, grad_k, grad_v) = loss_and_grads(teacher, student, mask, {(1, 1): 1.0}, chunk_size)
    left = student[0].detach().clone().requires_grad_()
    right = student[0].detach().clone().requires_grad_()
    split = relation_loss((teacher[0], teacher[0], teacher[2]), (left, right, student[2]), mask,
                          num_relation_heads=HEADS, relations={(1, 2): 1.0}, chunk_size=chunk_size)[0]
    grad_left, grad_right = torch.autograd.grad(split, (left, right))
    torch.testing.assert_close(total, split)
    torch.testing.assert_close(grad_q, grad_left + grad_right, rtol=1e-5, atol=1e-8)
    assert grad_left.abs().max() > 1e-4 and grad_right.abs().max() > 1e-4
    assert grad_k.abs().max() == 0 and grad_v.abs().max() == 0


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_matches_published_per_example_loop(chunk_size):
    teacher, student, mask = make_inputs([10, 3, 7, 1, 10, 5], 10, seed=4)
    total, _, grads = loss_and_grads(teacher, student, mask, MIXED, chunk_size)
    ref = published_loop(teacher, student, mask, HEADS, MIXED)
    assert_close_to_64(total, grads, ref, torch.autograd.grad(ref, student))


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_padding_anywhere(chunk_size):
    teacher, student, mask = make_inputs([9, 9, 9], 9, seed=5)
    mask[0, :3] = 0                                  # left padding
    mask[1, 2:4] = 0                                 # a hole
    mask[2, ::2] = 0
    total, _, grads = loss_and_grads(teacher, student, mask, QKV, chunk_size)
    ref = reference64(teacher, student, mask, HEADS, QKV)
    assert_close_to_64(total, grads, ref, torch.autograd.grad(ref, student))


@pytest.mark.parametrize("chunk_size", [None, 2, 8])
def test_all_padding_and_length_one_examples(chunk_size):
    # example 1: no real token (adds 0 but counts in B); example 2: one real token (KL of 1-key rows is 0)
    teacher, student, mask = make_inputs([8, 0, 1], 8, seed=6)
    total, parts, grads = loss_and_grads(teacher, student, mask, QKV, chunk_size)
    alone = relation_loss(tuple(t[:1] for t in teacher), tuple(s[:1] for s in student), mask[:1],
                          num_relation_heads=HEADS, relations=QKV, chunk_size=chunk_size)[0]
    torch.testing.assert_close(total, alone / 3, rtol=1e-5, atol=1e-8)
    for g in grads:
        assert torch.isfinite(g).all()
        assert g[1].abs().max() == 0
        # a 1-key row has KL 0 and gradient 0, up to the rounding of the chunked backward's exp(z - lse) = 1
        assert g[2].abs().max() <= 1e-4 * g[0].abs().max()
        assert g[0].abs().max() > 0


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_peaked_logits(chunk_size):
    # logits in the hundreds: softmax entries far below float32's range, exercised with padding
    teacher, student, mask = make_inputs([12, 5, 1], 12, seed=7, scale=6.0)
    total, _, grads = loss_and_grads(teacher, student, mask, QKV, chunk_size)
    ref = reference64(teacher, student, mask, HEADS, QKV)
    assert_close_to_64(total, grads, ref, torch.autograd.grad(ref, student), rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_half_precision_inputs(dtype, chunk_size):
    teacher, student, mask = make_inputs(LENGTHS, 13, seed=8)
    full, _, full_grads = loss_and_grads(teacher, student, mask, QKV, chunk_size)
    low_teacher = tuple(t.to(dtype) for t in teacher)
    low_student = tuple(s.detach().to(dtype).requires_grad_() for s in student)
    total, parts, grads = loss_and_grads(low_teacher, low_student, mask, QKV, chunk_size)
    assert total.dtype == torch.float32 and all(p.dtype == torch.float32 for p in parts.values())
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)
    # the same rounded values in float32 give the same loss: the arithmetic itself is float32
    upcast, _, upcast_grads = loss_and_grads(tuple(t.float() for t in low_teacher),
                                             tuple(s.detach().float().requires_grad_() for s in low_student),
                                             mask, QKV, chunk_size)
    torch.testing.assert_close(total, upcast, rtol=1e-5, atol=1e-7)
    for g, u in zip(grads, upcast_grads, strict=True):
        torch.testing.assert_close(g.float(), u.to(dtype).float())
    # and close to the float32 inputs' loss, within the rounding of the inputs
    rtol = 2e-3 if dtype == torch.float16 else 2e-2
    torch.testing.assert_close(total, full, rtol=rtol, atol=0)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_float32_inside_autocast(chunk_size):
    teacher, student, mask = make_inputs(LENGTHS, 13, seed=12)
    plain, _, plain_grads = loss_and_grads(teacher, student, mask, QKV, chunk_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = relation_loss(teacher, student, mask, num_relation_heads=HEADS, relations=QKV, chunk_size=chunk_size)
    grads = torch.autograd.grad(total, student)    # backward outside the region, as autocast recommends
    torch.testing.assert_close(total, plain)
    for g, p in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(g, p)


def test_parts_and_weights():
    teacher, student, mask = make_inputs(LENGTHS, 13, seed=9)
    total, parts = relation_loss(teacher, student, mask, num_relation_heads=HEADS, relations=MIXED, chunk_size=4)
    assert list(parts) == ["qq", "qk", "kv", "vv"]
    assert all(not p.requires_grad and p.dim() == 0 for p in parts.values())
    weighted = sum(w * parts[relation_name(pair)] for pair, w in MIXED.items())
    torch.testing.assert_close(total.detach(), weighted)
    assert total.requires_grad


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_teacher_gets_no_gradient(chunk_size):
    teacher, student, mask = make_inputs(LENGTHS, 13, seed=10)
    teacher = tuple(t.requires_grad_() for t in teacher)
    total, _ = relation_loss(teacher, student, mask, num_relation_heads=HEADS, relations=QKV, chunk_size=chunk_size)
    total.backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None for s in student)


def saved_shapes(chunk_size, seq):
    teacher, student, mask = make_inputs([seq, seq - 3], seq, seed=11)
    shapes = []

    def pack(tensor):
        shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        total, _ = relation_loss(teacher, student, mask, num_relation_heads=HEADS, relations=MIXED,
                                 chunk_size=chunk_size)
    total.backward()
    return shapes


def test_chunked_saves_no_sequence_by_sequence_tensor():
    seq = 24
    quadratic = lambda shape: len(shape) >= 2 and shape[-2:] == (seq, seq)  # noqa: E731
    assert any(quadratic(s) for s in saved_shapes(None, seq))   # the hook sees what the reference keeps
    shapes = saved_shapes(4, seq)
    assert shapes and not any(quadratic(s) for s in shapes)
    assert all(math.prod(s) <= 2 * seq * 32 * HEADS for s in shapes)   # inputs, mask, (B * A, S) row stats


# -- parsing ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("qq:1,kk:1,vv:1", {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}),
    ("qk:0.5", {(1, 2): 0.5}),
    ("1-1:1.0, 2-3:2", {(1, 1): 1.0, (2, 3): 2.0}),
    (" VQ : 0.25 ,kk", {(3, 1): 0.25, (2, 2): 1.0}),
    ("vv:0", {(3, 3): 0.0}),
])
def test_parse_relations(spec, expected):
    parsed = parse_relations(spec)
    assert parsed == expected and list(parsed) == list(expected)
    assert all(isinstance(w, float) for w in parsed.values())


@pytest.mark.parametrize("spec, message", [
    ("", r"relations '' is empty: accepted forms: NAME:WEIGHT"),
    ("qq:1,qx:1", r"relation item 'qx:1': 'qx' names no relation; accepted forms: .*'qq:1,kk:1,vv:1' or '1-2:0.5'"),
    ("1-4:1", r"relation item '1-4:1': '1-4' names no relation; accepted forms"),
    ("qq:1,", r"relation item '': '' names no relation"),
    ("qq:abc", r"relation item 'qq:abc': the weight must be a finite number >= 0"),
    ("kk:-1", r"relation item 'kk:-1': the weight must be a finite number >= 0"),
    ("qq:nan", r"the weight must be a finite number >= 0"),
    ("qq:1,1-1:2", r"relation item '1-1:2': qq is given twice; list each relation once"),
])
def test_parse_relations_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_relations(spec)


def test_relation_name():
    assert relation_name((1, 1)) == "qq"
    assert relation_name((1, 2)) == "qk"
    assert relation_name((3, 2)) == "vk"
    assert [relation_name(p) for p in parse_relations("qq:1,kk:1,vv:1")] == ["qq", "kk", "vv"]
    with pytest.raises(ValueError, match=r"relation \(0, 1\) is not a pair \(m, n\) with m, n in 1\.\.3"):
        relation_name((0, 1))


# -- input validation ---------------------------------------------------------------------

def call(teacher, student, mask, **kwargs):
    kwargs = {"num_relation_heads": HEADS, "relations": QKV, "chunk_size": None, **kwargs}
    return relation_loss(teacher, student, mask, **kwargs)


def test_mismatched_batch_or_length():
    teacher, student, mask = make_inputs([5, 3], 5)
    with pytest.raises(ValueError, match=r"the teacher query is \[B, S\] = \[2, 5\] but attention_mask is \[2, 4\]: "
                                         r"pass the teacher and student Q/K/V and the mask of the same batch"):
        call(teacher, student, mask[:, :4])
    short = tuple(s[:1] for s in student)
    with pytest.raises(ValueError, match=r"the student query is \[B, S\] = \[1, 5\] but attention_mask is \[2, 5\]"):
        call(teacher, short, mask)
    with pytest.raises(ValueError, match=r"attention_mask must be a \[B, S\] tensor of 0/1, got \(2, 5, 1\)"):
        call(teacher, student, mask[..., None])
    with pytest.raises(ValueError, match=r"teacher_qkv must be a \(query, key, value\) tuple of three"):
        call(teacher[:2], student, mask)
    with pytest.raises(ValueError, match=r"student_qkv key has shape \(2, 5\) and dtype torch.float32: "
                                         r"expected a floating-point \[B, S, H\] tensor"):
        call(teacher, (student[0], student[1][..., 0], student[2]), mask)


@pytest.mark.parametrize("relations, message", [
    ({}, r"relations is empty: give \{\(m, n\): weight\} with at least one pair"),
    ({(1, 4): 1.0}, r"relation \(1, 4\) is not a pair \(m, n\) with m, n in 1\.\.3 \(1 = query, 2 = key, 3 = value\)"),
    ({(0, 1): 1.0}, r"relation \(0, 1\) is not a pair"),
    ({"qq": 1.0}, r"relation 'qq' is not a pair"),
    ("qx:1", r"relation item 'qx:1': 'qx' names no relation"),
    (5, r"relations=5 is not \{\(m, n\): weight\} nor text like 'qq:1,kk:1,vv:1'"),
])
def test_bad_relations(relations, message):
    teacher, student, mask = make_inputs([5, 3], 5)
    with pytest.raises(ValueError, match=message):
        call(teacher, student, mask, relations=relations)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_bad_chunk_size(chunk_size):
    teacher, student, mask = make_inputs([5, 3], 5)
    with pytest.raises(ValueError, match=r"chunk_size=.* must be a positive number of query rows "
                                         r"\(e\.g\. 64 or 128\), or None for the unchunked reference"):
        call(teacher, student, mask, chunk_size=chunk_size)


def test_relation_heads_must_divide_each_width():
    teacher, student, mask = make_inputs([5, 3], 5, t_width=48, s_width=20)
    with pytest.raises(ValueError, match=r"num_relation_heads=8 does not divide the student query width \(20\): "
                                         r"choose a divisor of every width \(20, 48\), i\.e\. one of 1, 2, 4$"):
        call(teacher, student, mask, num_relation_heads=8)
    with pytest.raises(ValueError, match=r"num_relation_heads=3 does not divide the student query width \(20\)"):
        call(teacher, student, mask, num_relation_heads=3)
    teacher, student, mask = make_inputs([5, 3], 5, t_width=36, s_width=24)
    with pytest.raises(ValueError,
                       match=r"does not divide the teacher query width \(36\): .* one of 1, 2, 3, 4, 6, 12$"):
        call(teacher, student, mask, num_relation_heads=8)
    with pytest.raises(ValueError, match=r"num_relation_heads=0 must be a positive integer"):
        call(teacher, student, mask, num_relation_heads=0)


def test_relation_needs_equal_widths():
    teacher, student, mask = make_inputs([5, 3], 5)
    wide_value = (student[0], student[1], torch.randn(2, 5, 32))
    with pytest.raises(ValueError, match=r"relation qv: the student q width \(16\) differs from its v width \(32\)"):
        call(teacher, wide_value, mask, relations={(1, 3): 1.0})


def test_relations_as_text_like_the_command_line():
    from distill.relations import RelationSpec

    teacher, student, mask = make_inputs([5, 3], 5)
    assert torch.equal(call(teacher, student, mask, relations="qq:1,kv:0.5")[0],
                       call(teacher, student, mask, relations={(1, 1): 1.0, (2, 3): 0.5})[0])
    assert dict(RelationSpec(4, "vv:2").relations) == {(3, 3): 2.0}


@pytest.mark.parametrize("relations, message", [
    ("qq:0", r"every relation \(qq\) has weight 0: nothing would be distilled"),
    ("qq:0,kk:0,vv:0", r"every relation \(qq, kk, vv\) has weight 0"),
    ("qq:1,kk:0,vv:2", r"relation kk has weight 0: it would be computed every step and teach nothing; "
                       r"leave it out \('qq:1,vv:2'\)"),
    ({(1, 1): 0.0}, r"every relation \(qq\) has weight 0"),
    ({(1, 1): -1.0}, r"relation qq: weight -1.0 is not a finite number > 0"),
    ({(1, 1): float("inf")}, r"relation qq: weight inf is not a finite number > 0"),
    ({(1, 1): "1"}, r"relation qq: weight '1' is not a finite number > 0"),
])
def test_relations_that_teach_nothing_are_refused(relations, message):
    from distill.relations import checked_relations

    with pytest.raises(ValueError, match=message):
        checked_relations(relations)
