"""create_student: shapes, copied slices, layer choice, random init, validation, save/load round trip."""
from __future__ import annotations

import pytest
import torch
import transformers
from helpers import padded_batch
from transformers import AutoConfig, AutoModel, BertConfig, BertForMaskedLM, BertModel

from distill.encoders import UnsupportedEncoder, get_adapter
from distill.student import create_student, default_layer_map
from distill.teacher import FrozenTeacher

VOCAB = 99


def tiny_bert(layers: int = 4, hidden: int = 64, heads: int = 4, ffn: int = 256, head: bool = False):
    config = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=ffn, max_position_embeddings=40, type_vocab_size=2, pad_token_id=0,
                        hidden_act="gelu_new", layer_norm_eps=1e-7)
    torch.manual_seed(0)
    return (BertForMaskedLM if head else BertModel)(config).eval()


def batch():
    return padded_batch(VOCAB, 2, 7)


# ----------------------------------------------------------------------------- shape and config
def test_shape_and_teacher_vocabulary():
    teacher = tiny_bert()
    student = create_student(teacher, 2, 32, 2)
    assert type(student) is BertModel
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (2, 32, 2, 128)
    for field in ("vocab_size", "pad_token_id", "max_position_embeddings", "type_vocab_size", "hidden_act",
                  "layer_norm_eps"):
        assert getattr(c, field) == getattr(teacher.config, field), field
    assert len(student.encoder.layer) == 2
    assert student.embeddings.word_embeddings.weight.shape == (VOCAB, 32)
    assert student.encoder.layer[0].attention.self.query.weight.shape == (32, 32)
    assert student.encoder.layer[0].intermediate.dense.weight.shape == (128, 32)
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert teacher.config.num_hidden_layers == 4 and teacher.config.hidden_size == 64  # teacher untouched
    out = student(*batch())
    assert out.last_hidden_state.shape == (2, 7, 32)


def test_intermediate_size_keeps_teacher_ratio_or_is_given():
    assert create_student(tiny_bert(ffn=128), 2, 32, 2).config.intermediate_size == 64  # ratio 2
    assert create_student(tiny_bert(ffn=256), 2, 32, 2).config.intermediate_size == 128  # ratio 4
    assert create_student(tiny_bert(), 2, 32, 2, intermediate_size=48).config.intermediate_size == 48


def test_head_model_teacher_gives_base_student():
    student = create_student(tiny_bert(head=True), 2, 32, 2)
    assert type(student) is BertModel


# ----------------------------------------------------------------------------- teacher init
def test_default_layer_map():
    assert default_layer_map(12, 6) == [2, 4, 6, 8, 10, 12]
    assert default_layer_map(12, 4) == [3, 6, 9, 12]
    assert default_layer_map(24, 6) == [4, 8, 12, 16, 20, 24]
    assert default_layer_map(6, 4) == [2, 3, 5, 6]
    assert default_layer_map(4, 4) == [1, 2, 3, 4]
    assert default_layer_map(12, 1) == [12]


def assert_layer_is_slice(student_layer, teacher_layer, h, f):
    pairs = {
        "attention.self.query.weight": (h, h), "attention.self.key.weight": (h, h),
        "attention.self.value.weight": (h, h), "attention.self.query.bias": (h,),
        "attention.output.dense.weight": (h, h), "attention.output.LayerNorm.weight": (h,),
        "attention.output.LayerNorm.bias": (h,), "intermediate.dense.weight": (f, h),
        "intermediate.dense.bias": (f,), "output.dense.weight": (h, f), "output.dense.bias": (h,),
        "output.LayerNorm.weight": (h,),
    }
    s, t = dict(student_layer.named_parameters()), dict(teacher_layer.named_parameters())
    for name, shape in pairs.items():
        assert s[name].shape == shape, name
        assert torch.equal(s[name], t[name][tuple(slice(0, n) for n in shape)]), name


def test_teacher_init_copies_embedding_and_layer_slices():
    teacher = tiny_bert(layers=4)
    student = create_student(teacher, 2, 32, 2)
    se, te = student.embeddings, teacher.embeddings
    assert torch.equal(se.word_embeddings.weight, te.word_embeddings.weight[:, :32])
    assert torch.equal(se.position_embeddings.weight, te.position_embeddings.weight[:, :32])
    assert torch.equal(se.token_type_embeddings.weight, te.token_type_embeddings.weight[:, :32])
    assert torch.equal(se.LayerNorm.weight, te.LayerNorm.weight[:32])
    assert torch.equal(se.LayerNorm.bias, te.LayerNorm.bias[:32])
    assert torch.equal(student.pooler.dense.weight, teacher.pooler.dense.weight[:32, :32])
    # default map for 4 -> 2 layers: teacher layers 2 and 4 (1-based)
    for s_index, t_index in enumerate([1, 3]):
        assert_layer_is_slice(student.encoder.layer[s_index], teacher.encoder.layer[t_index], 32, 128)


def test_layer_map_chooses_teacher_layers():
    teacher = tiny_bert(layers=4)
    student = create_student(teacher, 3, 32, 2, layer_map=[1, 2, 3])
    for s_index, t_index in enumerate([0, 1, 2]):
        assert_layer_is_slice(student.encoder.layer[s_index], teacher.encoder.layer[t_index], 32, 128)


def test_same_shape_teacher_init_is_an_exact_copy():
    teacher = tiny_bert(layers=3, hidden=32, heads=4, ffn=128)
    student = create_student(teacher, 3, 32, 4).eval()
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(student(ids, mask).last_hidden_state, teacher(ids, mask).last_hidden_state)


def test_frozen_teacher_source_ends_the_map_at_teacher_layer():
    full = tiny_bert(layers=4)
    reference = {k: v.clone() for k, v in full.state_dict().items()}
    frozen = FrozenTeacher(full, 3, dtype="bfloat16")
    student = create_student(frozen, 1, 32, 2)
    assert all(p.dtype == torch.float32 for p in student.parameters())
    # the single student layer starts from teacher layer 3, the distilled one
    q = student.encoder.layer[0].attention.self.query.weight
    expected = reference["encoder.layer.2.attention.self.query.weight"][:32, :32].to(torch.bfloat16).float()
    assert torch.equal(q, expected)


def test_teacher_from_local_directory(tmp_path):
    teacher = tiny_bert()
    teacher.save_pretrained(tmp_path)
    from_path = create_student(str(tmp_path), 2, 32, 2)
    from_model = create_student(teacher, 2, 32, 2)
    assert type(from_path) is BertModel
    for (name, a), (_, b) in zip(from_path.state_dict().items(), from_model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert type(create_student(tmp_path, 2, 32, 2, init="random")) is BertModel


# ----------------------------------------------------------------------------- random init
def test_random_init_differs_from_teacher_and_uses_architecture_init():
    teacher = tiny_bert()
    student = create_student(teacher, 2, 32, 2, init="random")
    w = student.encoder.layer[1].attention.self.query.weight
    assert not torch.equal(w, teacher.encoder.layer[3].attention.self.query.weight[:32, :32])
    assert not torch.equal(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight[:, :32])
    assert abs(w.std().item() - teacher.config.initializer_range) < 0.01
    assert torch.equal(student.encoder.layer[0].output.LayerNorm.weight, torch.ones(32))
    wider = create_student(teacher, 2, 128, 4, init="random")  # wider than the teacher is fine at random
    assert wider.config.hidden_size == 128


# ----------------------------------------------------------------------------- other architectures
def build_other(model_type: str):
    if model_type == "distilbert":
        shape = dict(dim=64, n_layers=4, n_heads=4, hidden_dim=256)
    else:
        shape = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256)
    if model_type == "electra":
        shape["embedding_size"] = 48
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, max_position_embeddings=40, **shape)
    torch.manual_seed(0)
    return AutoModel.from_config(config).eval()


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta", "electra", "mpnet", "distilbert"])
def test_other_architectures(model_type, tmp_path):
    teacher = build_other(model_type)
    adapter = get_adapter(teacher)
    student = create_student(teacher, 2, 32, 2)
    assert type(student) is type(teacher)
    assert (adapter.num_layers(student.config), adapter.hidden_size(student.config),
            adapter.num_attention_heads(student.config), adapter.intermediate_size(student.config)) == (2, 32, 2, 128)
    s_q = adapter.qkv(student, 1)[0].weight
    t_q = adapter.qkv(teacher, 3)[0].weight
    assert torch.equal(s_q, t_q[:32, :32])
    s_word = adapter.embedding_modules(student)["word"].weight
    t_word = adapter.embedding_modules(teacher)["word"].weight
    assert torch.equal(s_word, t_word[:, : s_word.shape[1]])
    if model_type == "electra":  # factorised embedding stays factorised, no wider than the student
        assert student.config.embedding_size == 32
    if model_type == "mpnet":  # relative position bias: one column per head, the first 2 of the teacher's 4
        bias = student.encoder.relative_attention_bias.weight
        assert torch.equal(bias, teacher.encoder.relative_attention_bias.weight[:, :2])
    student.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is type(student)
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids, mask).last_hidden_state,
                                   student.eval()(ids, mask).last_hidden_state)


def test_sinusoidal_positions_are_rebuilt_not_sliced():
    config = transformers.DistilBertConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=256,
                                           max_position_embeddings=40, sinusoidal_pos_embds=True)
    teacher = transformers.DistilBertModel(config)
    student = create_student(teacher, 1, 32, 2)
    reference = transformers.DistilBertModel(student.config)  # the architecture's own sinusoids at width 32
    torch.testing.assert_close(student.embeddings.position_embeddings.weight,
                               reference.embeddings.position_embeddings.weight)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs,pattern", [
    (dict(num_layers=2, hidden_size=30, num_attention_heads=4),
     r"hidden_size=30 is not divisible by num_attention_heads=4: use hidden_size 28 or 32, "
     r"or num_attention_heads among 1, 2, 3, 5, 6, 10, 15, 30"),
    (dict(num_layers=0, hidden_size=32, num_attention_heads=2), r"num_layers=0 must be a positive integer"),
    (dict(num_layers=5, hidden_size=32, num_attention_heads=2),
     r"num_layers=5 is out of range: the teacher has 4 layers; choose 1\.\.4"),
    (dict(num_layers=2, hidden_size=128, num_attention_heads=2),
     r"hidden_size=128 is larger than the teacher's 64: .*init='random'"),
    (dict(num_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=512),
     r"intermediate_size=512 is larger than the teacher's 256"),
    (dict(num_layers=2, hidden_size=32, num_attention_heads=2, init="copy"),
     r"init='copy' is unknown: choose 'teacher' .* or 'random'"),
    (dict(num_layers=2, hidden_size=32, num_attention_heads=2, layer_map=[1]),
     r"layer_map=\[1\] must list 2 teacher layers .* each 1\.\.4"),
    (dict(num_layers=2, hidden_size=32, num_attention_heads=2, layer_map=[0, 4]), r"each 1\.\.4 \(1-based\)"),
    (dict(num_layers=2, hidden_size=32, num_attention_heads=2, layer_map=[1, 2], init="random"),
     r"only applies with init='teacher'"),
    (dict(num_layers=2, hidden_size=32, num_attention_heads=0), r"num_attention_heads=0 must be a positive integer"),
])
def test_validation_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        create_student(tiny_bert(layers=4, hidden=64, ffn=256), **kwargs)


@pytest.mark.parametrize("init", ["teacher", "random"])
def test_a_missing_teacher_directory_is_named(tmp_path, init):
    with pytest.raises(ValueError, match=f"teacher {tmp_path}/none: no such directory; give a model directory"):
        create_student(str(tmp_path / "none"), 1, 32, 4, init=init)


def test_unsupported_teacher():
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=VOCAB))
    with pytest.raises(ValueError, match="not a supported encoder"):
        create_student(gpt2, 1, 32, 4)


@pytest.mark.parametrize("init", ["teacher", "random"])
def test_unsupported_teacher_directory(tmp_path, init):
    config = transformers.AlbertConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=4, intermediate_size=64)
    transformers.AlbertModel(config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedEncoder, match=r"Albert\w+ \(model_type 'albert'\) is not a supported encoder; "
                                                 r"supported model_types: .*modernbert.*\. ALBERT shares"):
        create_student(tmp_path, 1, 32, 4, init=init)


# ----------------------------------------------------------------------------- save and load
def test_save_pretrained_and_automodel_round_trip(tmp_path):
    student = create_student(tiny_bert(head=True), 2, 32, 2)
    student.save_pretrained(tmp_path)
    loaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is BertModel
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert loaded.config.num_hidden_layers == 2 and loaded.config.hidden_size == 32
    for (name, a), (_, b) in zip(loaded.state_dict().items(), student.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids, mask).last_hidden_state,
                                   student.eval()(ids, mask).last_hidden_state)
