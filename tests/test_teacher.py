"""FrozenTeacher: frozen, truncated, cast; its Q/K/V equal the full model's; QKVCapture semantics."""
from __future__ import annotations

import copy
import gc
import re
import weakref

import pytest
import torch
from helpers import padded_batch
from transformers import (
    AlbertConfig,
    AutoModel,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    DebertaConfig,
    DebertaModel,
    DistilBertConfig,
    DistilBertModel,
)

from distill.encoders import UnsupportedEncoder, get_adapter
from distill.teacher import FrozenTeacher, QKVCapture, resolve_dtype

VOCAB = 99


def tiny_bert(layers: int = 4, attn: str = "eager", head: bool = False):
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, attn_implementation=attn)
    torch.manual_seed(0)
    return (BertForMaskedLM if head else BertModel)(config).eval()


def batch(seq: int = 9):
    return padded_batch(VOCAB, 2, seq, {1: seq - 3})


def reference_qkv(model, layer_index0, ids, mask, **kwargs):
    """Q/K/V of a full, untouched model (its whole forward runs)."""
    capture = QKVCapture(model, layer_index0)
    with torch.no_grad(), capture:
        model(input_ids=ids, attention_mask=mask, **kwargs)
    qkv = capture.pop()
    capture.remove()
    return qkv


@pytest.mark.parametrize("teacher_layer", [1, 3, 4])
def test_outputs_equal_full_models_projections(teacher_layer):
    full = tiny_bert(head=True)
    ids, mask = batch()
    expected = reference_qkv(full, teacher_layer - 1, ids, mask)
    teacher = FrozenTeacher(copy.deepcopy(full), teacher_layer)
    got = teacher(ids, mask)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == (2, 9, 32)
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)


def test_frozen_eval_no_grad_no_graph():
    teacher = FrozenTeacher(tiny_bert(), 2)
    assert not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())
    ids, mask = batch()
    with torch.enable_grad():
        q, k, v = teacher(ids, mask)
    for t in (q, k, v):
        assert not t.requires_grad and t.grad_fn is None
        assert not t.is_inference()  # no_grad, not inference_mode: autograd functions may save it


def test_layers_dropped_config_updated_head_left_behind_and_memory_released():
    full = tiny_bert(layers=4, head=True)
    dropped = weakref.ref(full.bert.encoder.layer[3])
    teacher = FrozenTeacher(full, 2)
    assert isinstance(teacher.model, BertModel)  # the MLM head is not part of the teacher
    assert len(teacher.model.encoder.layer) == 2
    assert teacher.config.num_hidden_layers == 2
    assert (teacher.teacher_layer, teacher.num_layers, teacher.hidden_size) == (2, 2, 32)
    gc.collect()
    assert dropped() is None


def test_teacher_layer_block_above_projections_does_not_run():
    teacher = FrozenTeacher(tiny_bert(layers=3), 3)
    layer = teacher.model.encoder.layer[2]
    ran = []
    hooks = [module.register_forward_hook(lambda *a, name=name: ran.append(name))
             for name, module in [("attention.output", layer.attention.output), ("intermediate", layer.intermediate),
                                  ("layer1.intermediate", teacher.model.encoder.layer[1].intermediate)]]
    teacher(*batch())
    teacher(*batch())
    for h in hooks:
        h.remove()
    assert ran == ["layer1.intermediate", "layer1.intermediate"]


def test_dtype_defaults_and_choices():
    assert FrozenTeacher(tiny_bert(), 2).dtype == torch.float32  # CPU default
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype(torch.float32, torch.device("cuda")) == torch.float32

    teacher = FrozenTeacher(tiny_bert(), 2, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in teacher.model.parameters())
    q, _, _ = teacher(*batch())
    assert q.dtype == torch.bfloat16
    teacher = FrozenTeacher(tiny_bert(), 2, dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in teacher.model.parameters())

    with pytest.raises(ValueError, match="choose auto, float16, bfloat16 or float32"):
        FrozenTeacher(tiny_bert(), 2, dtype="int8")
    with pytest.raises(ValueError, match="choose auto, float16, bfloat16 or float32"):
        FrozenTeacher(tiny_bert(), 2, dtype=torch.float64)


@pytest.mark.parametrize("teacher_layer", [0, 5, -1])
def test_teacher_layer_bounds(teacher_layer):
    with pytest.raises(ValueError, match=r"BertModel\) has 4 layers; choose 1\.\.4"):
        FrozenTeacher(tiny_bert(layers=4), teacher_layer)


def test_rejects_unknown_source():
    with pytest.raises(TypeError, match="a model, a hub name or a directory"):
        FrozenTeacher(42, 1)


@pytest.mark.parametrize("path", ["./missing", "{tmp}/missing", "{tmp}/a/b"])
def test_a_missing_directory_is_named_not_sent_to_the_hub(tmp_path, path):
    path = path.format(tmp=tmp_path)
    with pytest.raises(ValueError, match=f"teacher {re.escape(path)}: no such directory; give a model directory "
                                         "or a hub name like google-bert/bert-base-uncased"):
        FrozenTeacher(path, 1)
    (tmp_path / "file").write_text("{}")
    with pytest.raises(ValueError, match="a file, not a model directory"):
        FrozenTeacher(tmp_path / "file", 1)


def test_an_unsupported_teacher_directory_is_refused_before_its_weights_are_read(tmp_path):
    AlbertConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64).save_pretrained(tmp_path)  # a config and no weights at all
    with pytest.raises(UnsupportedEncoder, match=r"^teacher AlbertConfig \(model_type 'albert'\) is not a supported "
                                                 r"encoder; supported model_types: .*deberta-v2.*modernbert.*\. "
                                                 r"ALBERT shares one layer's weights"):
        FrozenTeacher(tmp_path, 1)


def test_an_unsupported_teacher_model_is_refused():
    v1 = DebertaModel(DebertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                    intermediate_size=64))
    with pytest.raises(ValueError, match=r"DebertaModel \(model_type 'deberta'\) .* use a DeBERTa-v2/v3 model"):
        FrozenTeacher(v1, 1)


def test_loads_from_local_directory(tmp_path):
    full = tiny_bert(head=True)
    full.save_pretrained(tmp_path)
    ids, mask = batch()
    expected = reference_qkv(full, 2, ids, mask)
    for source in (str(tmp_path), tmp_path):
        teacher = FrozenTeacher(source, 3, attn_implementation="sdpa")
        assert isinstance(teacher.model, BertModel)
        assert teacher.config._attn_implementation == "sdpa"
        assert len(teacher.model.encoder.layer) == 3 and teacher.config.num_hidden_layers == 3
        assert not teacher.model.training and all(not p.requires_grad for p in teacher.model.parameters())
        for g, e in zip(teacher(ids, mask), expected, strict=True):
            torch.testing.assert_close(g, e, rtol=0, atol=1e-5)


def test_attn_implementation_on_a_model_and_token_type_ids():
    full = tiny_bert(attn="sdpa")
    ids, mask = batch()
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    expected = reference_qkv(full, 1, ids, mask, token_type_ids=types)
    teacher = FrozenTeacher(copy.deepcopy(full), 2, attn_implementation="eager")
    assert teacher.config._attn_implementation == "eager"
    for g, e in zip(teacher(ids, mask, types), expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-5)


def test_architecture_without_token_types_ignores_them():
    config = DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=3, n_heads=4, hidden_dim=64)
    teacher = FrozenTeacher(DistilBertModel(config), 2)
    assert teacher.config.n_layers == 2
    ids, mask = batch()
    q, k, v = teacher(ids, mask, torch.zeros_like(ids))
    assert q.shape == (2, 9, 32)


def test_capture_records_only_inside_with_and_pop_forgets():
    model = tiny_bert(layers=2)
    ids, mask = batch()
    capture = QKVCapture(model, 1)
    model(input_ids=ids, attention_mask=mask)  # outside `with`: nothing recorded
    with pytest.raises(RuntimeError, match="no q/k/v projection output was recorded for layer 2"):
        capture.pop()
    with capture:
        model(input_ids=ids, attention_mask=mask)
    q, k, v = capture.pop()
    assert q.requires_grad and q.grad_fn is not None  # under autograd the graph reaches the parameters
    with pytest.raises(RuntimeError):
        capture.pop()
    capture.remove()
    with capture:
        model(input_ids=ids, attention_mask=mask)
    with pytest.raises(RuntimeError):
        capture.pop()


def test_capture_stop_forward_ends_the_with_block_quietly():
    model = tiny_bert(layers=3)
    capture = QKVCapture(model, 0, stop_forward=True)
    reached = []
    with capture:
        model(*batch())
        reached.append("after the forward")  # skipped: the forward was interrupted
    assert reached == []
    assert capture.pop()[0].shape == (2, 9, 32)


# ----------------------------------------------------------------------------- the real teacher
def test_real_teacher_from_disk(teacher_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    enc = tokenizer(["The teacher is frozen and truncated.", "Short one."], padding=True, return_tensors="pt")
    full = AutoModel.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    depth = get_adapter(full).num_layers(full.config)
    assert depth == 6 and full.config.hidden_size == 384
    expected = reference_qkv(full, 4, enc["input_ids"], enc["attention_mask"])

    teacher = FrozenTeacher(teacher_dir, 5)
    assert teacher.dtype == torch.float32 and teacher.hidden_size == 384
    assert len(teacher.model.encoder.layer) == 5 and teacher.config.num_hidden_layers == 5
    got = teacher(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
    for g, e in zip(got, expected, strict=True):
        assert g.shape == (2, enc["input_ids"].shape[1], 384) and torch.isfinite(g).all()
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"has 6 layers; choose 1\.\.6"):
        FrozenTeacher(full, 7)


# ----------------------------------------------------------------------------- half precision on CPU
# Relative L2 error of Q/K/V against the float32 teacher, measured: tiny model 8e-4 (float16) and 6e-3
# (bfloat16); the real teacher on real text 1.6e-3 and 9.2e-3. The bounds leave about 3x.
HALF = [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)]


def relative_errors(got, expected) -> list[float]:
    return [((g.float() - e).norm() / e.norm()).item() for g, e in zip(got, expected, strict=True)]


@pytest.mark.parametrize("dtype, tolerance", HALF)
def test_a_half_precision_teacher_on_cpu_stays_close_to_float32(dtype, tolerance):
    full = tiny_bert(head=True)
    ids, mask = batch()
    expected = FrozenTeacher(copy.deepcopy(full), 3)(ids, mask)
    teacher = FrozenTeacher(copy.deepcopy(full), 3, dtype=dtype)
    assert teacher.dtype == dtype and all(p.dtype == dtype for p in teacher.model.parameters())
    got = teacher(ids, mask)
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in got)
    assert max(relative_errors(got, expected)) <= tolerance


@pytest.mark.parametrize("dtype, tolerance", HALF)
def test_the_real_teacher_in_half_precision_on_cpu(teacher_dir, dtype, tolerance):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    enc = tokenizer(["The teacher is frozen and truncated.", "Short one."], padding=True, return_tensors="pt")
    expected = FrozenTeacher(teacher_dir, 6)(enc["input_ids"], enc["attention_mask"])
    got = FrozenTeacher(teacher_dir, 6, dtype=dtype)(enc["input_ids"], enc["attention_mask"])
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in got)
    assert max(relative_errors(got, expected)) <= tolerance
