"""DeBERTa-v2/v3 and ModernBERT end to end on tiny random models: the relation loss on their captured
projections against a float64 reference, the stopped teacher forward, ModernBERT's capture before the
rotary embedding, the unpadded (re-padded) capture, and what a student copies from each."""
from __future__ import annotations

import copy
import gc
import math
import weakref

import pytest
import torch
import transformers
from helpers import padded_batch
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, DebertaV2Config, ModernBertConfig

from distill.encoders import _modernbert_attention_from_period, get_adapter
from distill.objective import MiniLMv2Objective
from distill.student import create_student
from distill.teacher import FrozenTeacher, QKVCapture, repad

VOCAB, SEQ, PAD_FROM = 99, 12, 8  # the second example is padding from position 8 on
HIDDEN, HEADS = 32, 4
BUCKETS = 8  # DeBERTa relative-position buckets: relative distances over 4 fall in log buckets at SEQ = 12
WINDOW = 8  # ModernBERT local_attention: a sliding layer sees +-4 tokens, fewer than SEQ
FULL, SLIDING = "full_attention", "sliding_attention"


pytestmark = pytest.mark.usefixtures("one_thread")


def deberta(layers: int = 4, head: str = "", v2_style: bool = False, seed: int = 0, init_range: float = 0.02
            ) -> nn.Module:
    """DeBERTa-v3 layout (relative attention only, shared keys, no absolute positions nor token types);
    v2_style: absolute positions and token types added to the input, separate position projections."""
    layout = dict(position_biased_input=True, type_vocab_size=2, share_att_key=False, position_buckets=-1,
                  norm_rel_ebd="none") if v2_style else \
        dict(position_biased_input=False, type_vocab_size=0, share_att_key=True, position_buckets=BUCKETS,
             norm_rel_ebd="layer_norm")
    config = DebertaV2Config(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=layers,
                             num_attention_heads=HEADS, intermediate_size=64, max_position_embeddings=32,
                             relative_attention=True, pos_att_type=["p2c", "c2p"], pad_token_id=0,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=init_range,
                             **layout)
    torch.manual_seed(seed)
    return getattr(transformers, f"DebertaV2{head or 'Model'}")(config).eval()


def modernbert_config(layers: int = 6, **kwargs) -> ModernBertConfig:
    fields = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS,
                  intermediate_size=48, local_attention=WINDOW, global_attn_every_n_layers=3,
                  max_position_embeddings=256, pad_token_id=0, cls_token_id=1, sep_token_id=2, bos_token_id=1,
                  eos_token_id=2, attention_bias=True, mlp_bias=True, norm_bias=True)
    return ModernBertConfig(**{**fields, **kwargs})


def modernbert(layers: int = 6, head: str = "", attn: str = "eager", seed: int = 0, init_range: float = 0.02,
               **kwargs) -> nn.Module:
    """Global attention every 3 layers from the first (F S S F S S), a window of WINDOW, biases everywhere
    (so the fused Wqkv and Wi biases are sliced block-wise too)."""
    config = modernbert_config(layers, initializer_range=init_range, **kwargs)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return getattr(transformers, f"ModernBert{head or 'Model'}")(config).eval()


FAMILIES = {
    "deberta-v3": lambda **kw: deberta(**kw),
    "deberta-v2-style": lambda **kw: deberta(v2_style=True, **kw),
    "modernbert": lambda **kw: modernbert(**kw),
}


def batch(seq: int = SEQ, pad_from: int = PAD_FROM):
    return padded_batch(VOCAB, 2, seq, {1: pad_from}, zero_padding=True)


def projections(model: nn.Module, layer_index0: int, layer_input: torch.Tensor) -> list[torch.Tensor]:
    """Q, K, V that layer `layer_index0` computes from its input, spelled per family (not via the adapter)."""
    base = get_adapter(model).base_model(model)
    if base.config.model_type == "modernbert":  # one fused [q | k | v] linear after the pre-attention norm
        layer = base.layers[layer_index0]
        return list(layer.attn.Wqkv(layer.attn_norm(layer_input)).split(HIDDEN, dim=-1))
    attention = base.encoder.layer[layer_index0].attention.self
    return [attention.query_proj(layer_input), attention.key_proj(layer_input), attention.value_proj(layer_input)]


def captured(model: nn.Module, layer_index0: int, ids, mask, grad: bool = False):
    """Q/K/V of a whole, uninterrupted forward of `model`."""
    capture = QKVCapture(model, layer_index0)
    with torch.set_grad_enabled(grad), capture:
        model(input_ids=ids, attention_mask=mask)
    qkv = capture.pop(mask)
    capture.remove()
    return qkv


# ----------------------------------------------------------------------------- the relation loss
def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    n, h = x.shape
    return x.reshape(n, heads, h // heads).transpose(0, 1)            # (A, n, d)


def minilmv2_reference(teacher_qkv, student_qkv, mask, heads: int, relations) -> tuple[torch.Tensor, dict]:
    """MiniLMv2 in float64, example by example on its real tokens only: per relation (m, n), A_r heads of
    softmax(X_m X_n^T / sqrt(d)), KL(teacher || student) summed over heads and rows / (A_r * n_b), mean over B."""
    names = "qkv"
    total, parts = torch.zeros((), dtype=torch.float64), {}
    for (m, n), weight in relations.items():
        per_example = []
        for b in range(mask.shape[0]):
            real = mask[b].bool()

            def log_probs(x_m, x_n, b=b, real=real):
                q = split_heads(x_m[b][real].double(), heads)
                k = split_heads(x_n[b][real].double(), heads)
                return torch.log_softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)   # (A, n, n)

            log_t = log_probs(teacher_qkv[m - 1], teacher_qkv[n - 1]).detach()
            log_s = log_probs(student_qkv[m - 1], student_qkv[n - 1])
            kl = (log_t.exp() * (log_t - log_s)).sum()
            per_example.append(kl / (heads * int(real.sum())))
        parts[names[m - 1] + names[n - 1]] = relation = torch.stack(per_example).mean()
        total = total + weight * relation
    return total, parts


RELATIONS = {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0, (1, 2): 0.5}


@pytest.mark.parametrize("impl,chunk_size", [("chunked", 5), ("reference", None)])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_relation_loss_on_captured_projections_equals_float64_reference(family, impl, chunk_size):
    # weights 10x the usual init: sharper attention, relations a narrower student does not reproduce closely
    teacher_model = FAMILIES[family](head="ForMaskedLM", init_range=0.2)
    depth = get_adapter(teacher_model).num_layers(teacher_model.config)
    # 3 student layers keep ModernBERT's local/global pattern; 16 wide, 2 heads
    student = create_student(teacher_model, 3, 16, 2).train()
    teacher = FrozenTeacher(copy.deepcopy(teacher_model), depth)
    objective = MiniLMv2Objective(teacher, student, num_relation_heads=4, relations=RELATIONS,
                                  relation_impl=impl, chunk_size=chunk_size)
    assert objective.relation_impl == impl
    ids, mask = batch()
    loss, parts = objective({"input_ids": ids, "attention_mask": mask})
    loss.backward()
    grads = {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}
    student.zero_grad(set_to_none=True)
    objective.remove()

    teacher_qkv = captured(teacher_model, depth - 1, ids, mask)      # the whole teacher, nothing stopped
    student_qkv = captured(student, 2, ids, mask, grad=True)
    expected, expected_parts = minilmv2_reference(teacher_qkv, student_qkv, mask, 4, RELATIONS)
    assert expected.item() > 1e-2
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-7)
    assert list(parts) == ["qq", "kk", "vv", "qk"]
    for name, value in expected_parts.items():
        torch.testing.assert_close(parts[name].double(), value.detach(), rtol=1e-5, atol=1e-7)

    # the gradient reaches the student's parameters, and equals the float64 reference's
    expected.backward()
    reference_grads = {name: p.grad for name, p in student.named_parameters() if p.grad is not None}
    assert set(grads) == set(reference_grads)
    scale = max(g.abs().max().item() for g in reference_grads.values())
    for name, g in grads.items():  # (a few gradients are 0 in exact arithmetic: DeBERTa's pos_key_proj bias)
        torch.testing.assert_close(g.double(), reference_grads[name].double(), rtol=1e-4, atol=1e-5 * scale,
                                   msg=lambda text, name=name: f"{name}: {text}")
    adapter = get_adapter(student)
    for linear in adapter.qkv(student, 2):  # the captured layer's projections
        assert grads[_param_name(student, linear.weight)].abs().sum() > 0
    if family == "modernbert":
        fused = grads["layers.2.attn.Wqkv.weight"]
        assert all(block.abs().sum() > 0 for block in fused.chunk(3))   # q, k and v blocks all learn
        assert "final_norm.weight" not in grads and "layers.2.attn.Wo.weight" not in grads  # above the projections
        assert grads["embeddings.tok_embeddings.weight"].abs().sum() > 0
    else:
        assert "encoder.layer.2.attention.output.dense.weight" not in grads
        assert grads["embeddings.word_embeddings.weight"].abs().sum() > 0
        if family == "deberta-v3":  # the student's relative-position embeddings shape its lower layers' scores
            assert grads["encoder.rel_embeddings.weight"].abs().sum() > 0


def _param_name(model: nn.Module, param: torch.Tensor) -> str:
    return next(name for name, p in model.named_parameters() if p is param)


# ----------------------------------------------------------------------------- the stopped teacher
@pytest.mark.parametrize("family,teacher_layer", [("deberta-v3", 2), ("deberta-v3", 4), ("deberta-v2-style", 3),
                                                  ("modernbert", 3), ("modernbert", 4), ("modernbert", 6)])
def test_stopped_teacher_forward_equals_the_full_models_layer(family, teacher_layer):
    full = FAMILIES[family](head="ForMaskedLM")
    adapter = get_adapter(full)
    depth = adapter.num_layers(full.config)
    ids, mask = batch()
    with torch.no_grad():
        layer_input = full(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[
            teacher_layer - 1]
        by_hand = projections(full, teacher_layer - 1, layer_input)
    uninterrupted = captured(full, teacher_layer - 1, ids, mask)

    model = copy.deepcopy(full)
    dropped = weakref.ref(adapter.layers(model)[teacher_layer]) if teacher_layer < depth else None
    teacher = FrozenTeacher(model, teacher_layer)
    base = teacher.model
    assert type(base).__name__ in ("DebertaV2Model", "ModernBertModel")  # the MLM head is left behind
    assert len(adapter.layers(base)) == teacher_layer and teacher.config.num_hidden_layers == teacher_layer
    if family == "modernbert":
        expected_types = ([FULL, SLIDING, SLIDING] * 2)[:teacher_layer]
        assert teacher.config.layer_types == expected_types
    gc.collect()
    assert dropped is None or dropped() is None

    # nothing of the captured layer after its projections runs
    top = adapter.layers(base)[-1]
    after = top.attn.Wo if family == "modernbert" else top.attention.output
    ran = []
    hook = after.register_forward_hook(lambda *args: ran.append(True))
    got = teacher(ids, mask)
    hook.remove()
    assert ran == []
    for g, u, h in zip(got, uninterrupted, by_hand, strict=True):
        assert g.shape == (2, SEQ, HIDDEN) and not g.requires_grad
        torch.testing.assert_close(g, u, rtol=0, atol=1e-6)
        torch.testing.assert_close(g, h, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["deberta-v3", "modernbert"])
def test_teacher_from_a_saved_directory(family, tmp_path):
    full = FAMILIES[family](head="ForSequenceClassification")
    full.save_pretrained(tmp_path)
    ids, mask = batch()
    expected = captured(full, 1, ids, mask)
    teacher = FrozenTeacher(tmp_path, 2)
    assert type(teacher.model).__name__ in ("DebertaV2Model", "ModernBertModel")
    for g, e in zip(teacher(ids, mask, torch.zeros_like(ids)), expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-5)


def test_deberta_capture_keeps_the_first_call_not_the_relative_embeddings_projection():
    model = deberta(layers=2)
    query_proj = model.encoder.layer[1].attention.self.query_proj
    calls = []
    hook = query_proj.register_forward_hook(lambda module, args, output: calls.append(tuple(output.shape)))
    ids, mask = batch()
    q, _, _ = captured(model, 1, ids, mask)
    hook.remove()
    # shared keys: the layer projects its input, then its relative-position embeddings with the same linear
    assert calls == [(2, SEQ, HIDDEN), (1, 2 * BUCKETS, HIDDEN)]
    assert q.shape == (2, SEQ, HIDDEN)


# ----------------------------------------------------------------------------- ModernBERT: before the rotary embedding
def rotated(model: nn.Module, layer_index0: int, q: torch.Tensor, k: torch.Tensor):
    """q, k [B, S, H] as the layer's attention uses them: per head, rotated by the model's own RoPE."""
    from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

    base = get_adapter(model).base_model(model)
    layer_type = base.config.layer_types[layer_index0]
    positions = torch.arange(q.shape[1]).unsqueeze(0)
    cos, sin = base.rotary_emb(q, positions, layer_type)

    def heads(x):
        return x.view(x.shape[0], x.shape[1], HEADS, -1).transpose(1, 2)   # (B, A, S, d)

    q_rot, k_rot = apply_rotary_pos_emb(heads(q), heads(k), cos, sin, unsqueeze_dim=1)
    return q_rot, k_rot


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("layer_index0", [0, 1])  # a global layer and a sliding one
def test_modernbert_capture_is_before_the_rotary_embedding(layer_index0, attn):
    model = modernbert(attn=attn)
    layer = model.layers[layer_index0]
    assert layer.attention_type == (FULL if layer_index0 == 0 else SLIDING)
    ids, mask = batch()
    attention_input = []
    hook = layer.attn.Wo.register_forward_pre_hook(lambda module, args: attention_input.append(args[0]))
    capture = QKVCapture(model, layer_index0)
    with torch.no_grad(), capture:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    hook.remove()
    q, k, v = capture.pop()
    with torch.no_grad():
        wqkv = layer.attn.Wqkv(layer.attn_norm(out.hidden_states[layer_index0]))
    # the fused output split in three, not rotated
    for got, block in zip((q, k, v), wqkv.split(HIDDEN, dim=-1), strict=True):
        torch.testing.assert_close(got, block, rtol=0, atol=1e-6)

    q_rot, k_rot = rotated(model, layer_index0, q, k)
    # the rotated vectors are what the attention uses: they reproduce the attention's output at real tokens
    scores = q_rot @ k_rot.transpose(-1, -2) / math.sqrt(HIDDEN // HEADS)                  # (B, A, S, S)
    allowed = mask.bool()[:, None, None, :].expand_as(scores).clone()
    if layer_index0 == 1:
        distance = (torch.arange(SEQ)[:, None] - torch.arange(SEQ)[None, :]).abs()
        allowed &= distance <= WINDOW // 2
    heads_v = v.view(2, SEQ, HEADS, -1).transpose(1, 2)
    attended = (scores.masked_fill(~allowed, -math.inf).softmax(-1) @ heads_v).transpose(1, 2).reshape(2, SEQ, HIDDEN)
    real = mask.bool()
    torch.testing.assert_close(attended[real], attention_input[0][real], rtol=1e-5, atol=1e-5)

    # and differ from the captured ones wherever the rotation is not the identity (every position but 0)
    q_heads = q.view(2, SEQ, HEADS, -1).transpose(1, 2)
    k_heads = k.view(2, SEQ, HEADS, -1).transpose(1, 2)
    torch.testing.assert_close(q_rot[:, :, 0], q_heads[:, :, 0], rtol=0, atol=1e-6)
    for original, turned in ((q_heads, q_rot), (k_heads, k_rot)):
        change = (turned - original).norm(dim=-1) / original.norm(dim=-1)                   # (B, A, S)
        assert (change[:, :, 1:] > 1e-3).all()
    # the rotation keeps lengths (per head): only the directions, hence the relations, change
    torch.testing.assert_close(q_rot.norm(dim=-1), q_heads.norm(dim=-1), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- unpadded projections
def test_unpadded_projections_are_put_back_in_place():
    model = modernbert(layers=3)
    layer = model.layers[1]
    ids, mask = batch()
    with torch.no_grad():
        hidden = layer.attn_norm(model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                                 .hidden_states[1])
        padded = layer.attn.Wqkv(hidden).split(HIDDEN, dim=-1)
    real = mask.bool()
    rows = hidden[real].clone().requires_grad_()              # [T, H]: the non-padding tokens, row-major
    assert rows.shape == (2 * SEQ - (SEQ - PAD_FROM), HIDDEN)

    capture = QKVCapture(model, 1)
    with capture:
        layer.attn.Wqkv(rows)  # what an unpadding forward (flash attention in transformers 5.0) computes
    q, k, v = capture.pop(mask)
    for got, expected in zip((q, k, v), padded, strict=True):
        assert got.shape == (2, SEQ, HIDDEN)
        torch.testing.assert_close(got[real], expected[real], rtol=0, atol=1e-6)
        assert torch.equal(got[~real], torch.zeros_like(got[~real]))
    (q.sum() + 2 * k.sum() + 3 * v.sum()).backward()  # differentiable: the gradient reaches the rows
    assert rows.grad is not None and rows.grad.abs().sum() > 0

    with capture:
        layer.attn.Wqkv(rows)
    with pytest.raises(RuntimeError, match=r"ran unpadded .* pass the batch's attention_mask to pop\(\)"):
        capture.pop()
    with capture:
        layer.attn.Wqkv(rows)
    with pytest.raises(RuntimeError, match=r"has 20 rows but the attention mask \(2, 12\) has 24 tokens"):
        capture.pop(torch.ones_like(mask))
    capture.remove()

    stopping = QKVCapture(model, 1, stop_forward=True)  # the teacher's capture ends its `with` quietly
    with torch.no_grad(), stopping:
        layer.attn.Wqkv(rows)
        raise AssertionError("not reached: the forward stops at the projection")
    assert stopping.pop(mask)[0].shape == (2, SEQ, HIDDEN)


def test_repad_puts_rows_in_row_major_order_of_any_mask():
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1]])
    rows = torch.arange(4 * 3, dtype=torch.float32).view(4, 3)
    out = repad(rows, mask)
    assert out.shape == (2, 4, 3)
    assert torch.equal(out[0, 1], rows[0]) and torch.equal(out[0, 2], rows[1])
    assert torch.equal(out[1, 0], rows[2]) and torch.equal(out[1, 3], rows[3])
    assert torch.equal(out[mask == 0], torch.zeros(4, 3))


# ----------------------------------------------------------------------------- students
BLOCKS = {"attn.Wqkv.weight": 3, "attn.Wqkv.bias": 3, "mlp.Wi.weight": 2, "mlp.Wi.bias": 2}  # ModernBERT's fused


def assert_student_copies(student, teacher, layer_map, layers_path, seed, blocks=None) -> list[str]:
    """Every student parameter is the leading slice of the teacher parameter the layer map names (block by
    block for fused ones); those without a teacher source equal a fresh init from the same seed. Returns
    the names without a source."""
    torch.manual_seed(seed)
    fresh = dict(type(student)(student.config).named_parameters())
    teacher_params = dict(teacher.named_parameters())
    prefix = layers_path + "."
    unsourced = []
    for name, param in student.named_parameters():
        in_layer = None
        source_name = name
        if name.startswith(prefix):
            index, in_layer = name[len(prefix):].split(".", 1)
            source_name = f"{prefix}{layer_map[int(index)] - 1}.{in_layer}"
        source = teacher_params.get(source_name)
        if source is None:
            unsourced.append(name)
            assert torch.equal(param, fresh[name]), name
            continue
        count = (blocks or {}).get(in_layer, 1)
        assert param.shape[0] % count == 0 and source.shape[0] % count == 0, name
        for s_block, t_block in zip(param.chunk(count), source.chunk(count), strict=True):
            expected = t_block[tuple(slice(0, n) for n in s_block.shape)]
            assert torch.equal(s_block, expected), f"{name} <- {source_name}"
    return unsourced


@pytest.mark.parametrize("v2_style", [False, True], ids=["v3", "v2-style"])
def test_deberta_student_copies_slices_and_loads_as_a_classifier(v2_style, tmp_path):
    teacher = deberta(v2_style=v2_style, head="ForMaskedLM")
    torch.manual_seed(7)
    student = create_student(teacher, 2, 16, 2)
    assert type(student).__name__ == "DebertaV2Model"
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (2, 16, 2, 32)
    assert c.pooler_hidden_size == 16  # the classification pooler reads the student's width
    for field in ("position_buckets", "share_att_key", "position_biased_input", "type_vocab_size", "pos_att_type",
                  "norm_rel_ebd", "max_relative_positions", "relative_attention"):
        assert getattr(c, field) == getattr(teacher.config, field), field
    assert assert_student_copies(student, teacher.deberta, [2, 4], "encoder.layer", seed=7) == []
    # named explicitly: the relative-position table, its LayerNorm, and the shared-key / separate projections
    base = teacher.deberta
    rows = 2 * BUCKETS if not v2_style else 2 * 32
    assert student.encoder.rel_embeddings.weight.shape == (rows, 16)
    assert torch.equal(student.encoder.rel_embeddings.weight, base.encoder.rel_embeddings.weight[:, :16])
    if v2_style:
        attention = student.encoder.layer[0].attention.self
        assert torch.equal(attention.pos_key_proj.weight, base.encoder.layer[1].attention.self.pos_key_proj.weight[
            :16, :16])
        assert torch.equal(student.embeddings.position_embeddings.weight, base.embeddings.position_embeddings.weight[
            :, :16])
        assert torch.equal(student.embeddings.token_type_embeddings.weight,
                           base.embeddings.token_type_embeddings.weight[:, :16])
    else:
        assert torch.equal(student.encoder.LayerNorm.weight, base.encoder.LayerNorm.weight[:16])
        assert torch.equal(student.encoder.LayerNorm.bias, base.encoder.LayerNorm.bias[:16])
        assert student.embeddings.position_embeddings is None and student.embeddings.token_type_embeddings is None

    student.save_pretrained(tmp_path)
    ids, mask = batch()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   student.eval()(input_ids=ids, attention_mask=mask).last_hidden_state)
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3).eval()
    assert classifier.pooler.dense.weight.shape == (16, 16)
    with torch.no_grad():
        logits = classifier(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def is_local(layer) -> bool:
    """Whether a ModernBERT layer's attention is windowed, as the installed transformers builds it."""
    attention = layer.attn
    if hasattr(attention, "sliding_window"):  # later 5.x
        return attention.sliding_window is not None
    return tuple(attention.local_attention) != (-1, -1)  # 5.0


def test_modernbert_default_layer_map_keeps_the_attention_types():
    teacher = modernbert(head="ForMaskedLM")
    t_types = teacher.config.layer_types
    assert t_types == [FULL, SLIDING, SLIDING] * 2
    adapter = get_adapter(teacher)
    assert adapter.default_layer_map(teacher.config, 3) == [1, 5, 6]
    torch.manual_seed(3)
    student = create_student(teacher, 3, 16, 2)
    assert student.config.layer_types == [FULL, SLIDING, SLIDING]
    assert [t_types[j - 1] for j in [1, 5, 6]] == student.config.layer_types  # each inherits its own type
    assert student.config.global_attn_every_n_layers == 3 and student.config.local_attention == WINDOW
    assert [is_local(layer) for layer in student.layers] == [False, True, True]
    assert [layer.attention_type for layer in student.layers] == student.config.layer_types
    assert student.config.intermediate_size == 24

    assert assert_student_copies(student, teacher.model, [1, 5, 6], "layers", seed=3, blocks=BLOCKS) == []
    # the fused blocks named explicitly: the student's key block is the leading part of the teacher's key block
    t_wqkv, s_wqkv = teacher.model.layers[4].attn.Wqkv, student.layers[1].attn.Wqkv
    assert s_wqkv.weight.shape == (48, 16)
    assert torch.equal(s_wqkv.weight[16:32], t_wqkv.weight[HIDDEN:HIDDEN + 16, :16])
    assert torch.equal(s_wqkv.bias[32:], t_wqkv.bias[2 * HIDDEN:2 * HIDDEN + 16])
    t_wi, s_wi = teacher.model.layers[5].mlp.Wi, student.layers[2].mlp.Wi
    assert torch.equal(s_wi.weight[24:], t_wi.weight[48:72, :16])  # the gate block
    assert torch.equal(student.final_norm.weight, teacher.model.final_norm.weight[:16])
    assert torch.equal(student.final_norm.bias, teacher.model.final_norm.bias[:16])
    assert isinstance(student.layers[0].attn_norm, nn.Identity)  # teacher layer 1 has none either

    # other depths: each student layer takes the nearest teacher layer of its type
    assert adapter.default_layer_map(teacher.config, 6) == [1, 2, 3, 4, 5, 6]
    assert adapter.default_layer_map(teacher.config, 2) == [4, 6]
    assert adapter.default_layer_map(teacher.config, 1) == [4]


def test_modernbert_explicit_layer_map_takes_the_inherited_types():
    teacher = modernbert()
    student = create_student(teacher, 3, 16, 2, layer_map=[4, 5, 1])   # F S F: global every 2
    assert student.config.layer_types == [FULL, SLIDING, FULL]
    assert student.config.global_attn_every_n_layers == 2
    assert [is_local(layer) for layer in student.layers] == [False, True, False]
    assert torch.equal(student.layers[2].attn.Wqkv.weight[:16], teacher.layers[0].attn.Wqkv.weight[:16, :16])
    ids, mask = batch()
    with torch.no_grad():
        assert torch.isfinite(student(input_ids=ids, attention_mask=mask).last_hidden_state).all()

    irregular = [2, 1, 1]  # S F F: no "global every n from the first" pattern
    if _modernbert_attention_from_period():  # transformers 5.0 places global layers by the period alone
        with pytest.raises(ValueError, match=r"would inherit the attention types .* cannot run"):
            create_student(teacher, 3, 16, 2, layer_map=irregular)
    else:
        student = create_student(teacher, 3, 16, 2, layer_map=irregular)
        assert student.config.layer_types == [SLIDING, FULL, FULL]
        assert [is_local(layer) for layer in student.layers] == [True, False, False]


def test_modernbert_student_round_trip_keeps_the_layer_types(tmp_path):
    student = create_student(modernbert(head="ForMaskedLM"), 3, 16, 2).eval()
    student.save_pretrained(tmp_path)
    loaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded).__name__ == "ModernBertModel"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert loaded.config.layer_types == [FULL, SLIDING, SLIDING]
    assert loaded.config.global_attn_every_n_layers == 3 and loaded.config.local_attention == WINDOW
    assert [is_local(layer) for layer in loaded.layers] == [False, True, True]
    ids, mask = batch(seq=20, pad_from=15)  # longer than the window
    real = mask.bool()  # (a padded token whose whole window is padding has no defined output)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(input_ids=ids, attention_mask=mask).last_hidden_state[real],
                                   student(input_ids=ids, attention_mask=mask).last_hidden_state[real])


def test_modernbert_students_sliding_layers_attend_locally():
    # the same rotary base for both types, so that only the window tells a sliding layer from a global one
    teacher = modernbert(global_rope_theta=10_000.0, local_rope_theta=10_000.0)
    student = create_student(teacher, 3, 16, 2).eval()
    assert student.config.layer_types == [FULL, SLIDING, SLIDING]
    all_global_config = copy.deepcopy(student.config)
    all_global_config.layer_types = [FULL] * 3
    all_global_config.global_attn_every_n_layers = 1
    all_global = type(student)(all_global_config).eval()
    all_global.load_state_dict(student.state_dict())
    assert [is_local(layer) for layer in all_global.layers] == [False, False, False]

    def outputs(model, seq):
        ids, mask = batch(seq=seq, pad_from=seq)
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).last_hidden_state

    short = WINDOW // 2 + 1  # every distance within the window: local and global attention agree
    torch.testing.assert_close(outputs(student, short), outputs(all_global, short), rtol=1e-5, atol=1e-5)
    local, everything = outputs(student, 20), outputs(all_global, 20)
    assert (local - everything).abs().max() > 1e-3
