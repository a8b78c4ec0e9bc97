"""Per-architecture adapters: Q/K/V locations, layers, truncation, embeddings, unsupported models."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import transformers
from torch import nn
from transformers import AutoConfig

from distill.encoders import SUPPORTED_MODEL_TYPES, get_adapter
from distill.teacher import QKVCapture

LAYERS, HIDDEN, HEADS, FFN, VOCAB = 3, 32, 4, 64, 99

# model_type -> (base class, head classes); every class name exists in transformers 5.x
ARCHITECTURES = {
    "bert": ("BertModel", ["BertForMaskedLM", "BertForSequenceClassification"]),
    "roberta": ("RobertaModel", ["RobertaForMaskedLM", "RobertaForTokenClassification"]),
    "xlm-roberta": ("XLMRobertaModel", ["XLMRobertaForSequenceClassification"]),
    "camembert": ("CamembertModel", ["CamembertForMaskedLM"]),
    "electra": ("ElectraModel", ["ElectraForPreTraining", "ElectraForMaskedLM"]),
    "mpnet": ("MPNetModel", ["MPNetForMaskedLM"]),
    "distilbert": ("DistilBertModel", ["DistilBertForMaskedLM", "DistilBertForSequenceClassification"]),
}
NO_SDPA = {"mpnet"}  # MPNet's attention is eager-only in transformers 5.x


def tiny_config(model_type: str, layers: int = LAYERS, attn: str = "eager"):
    if model_type == "distilbert":
        shape = dict(dim=HIDDEN, n_layers=layers, n_heads=HEADS, hidden_dim=FFN)
    else:
        shape = dict(hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS, intermediate_size=FFN)
    if model_type == "electra":
        shape["embedding_size"] = 16  # factorised embedding: exercises embeddings_project
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, max_position_embeddings=64, **shape)
    config._attn_implementation = attn
    return config


def build(class_name: str, config) -> nn.Module:
    torch.manual_seed(0)
    return getattr(transformers, class_name)(config).eval()


def cases():
    for model_type, (base, heads) in ARCHITECTURES.items():
        for class_name in [base, *heads]:
            for attn in ("eager", "sdpa"):
                if attn == "sdpa" and model_type in NO_SDPA:
                    continue
                yield pytest.param(model_type, class_name, attn, id=f"{class_name}-{attn}")


def batch():
    torch.manual_seed(1)
    ids = torch.randint(5, VOCAB, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a padded row
    return ids, mask


def test_every_supported_type_is_tested():
    assert set(SUPPORTED_MODEL_TYPES) == set(ARCHITECTURES)


@pytest.mark.parametrize("model_type,class_name,attn", list(cases()))
def test_captured_qkv_equal_projections_of_layer_inputs(model_type, class_name, attn):
    model = build(class_name, tiny_config(model_type, attn=attn))
    assert model.config._attn_implementation == attn
    adapter = get_adapter(model)
    assert adapter.num_layers(model.config) == LAYERS
    assert adapter.hidden_size(model.config) == HIDDEN
    assert adapter.num_attention_heads(model.config) == HEADS
    assert adapter.intermediate_size(model.config) == FFN
    assert len(adapter.layers(model)) == LAYERS
    assert type(adapter.base_model(model)).__name__ == ARCHITECTURES[model_type][0]

    ids, mask = batch()
    captures = [QKVCapture(model, layer) for layer in range(LAYERS)]
    with torch.no_grad():
        with contextlib.ExitStack() as recording:
            for capture in captures:
                recording.enter_context(capture)
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        assert len(out.hidden_states) == LAYERS + 1
        for layer, capture in enumerate(captures):
            layer_input = out.hidden_states[layer]  # [B, S, H], the input of layer `layer`
            for got, linear in zip(capture.pop(), adapter.qkv(model, layer), strict=True):
                assert isinstance(linear, nn.Linear)
                assert got.shape == (2, 9, HIDDEN)
                torch.testing.assert_close(got, linear(layer_input), rtol=0, atol=1e-6)
            capture.remove()


@pytest.mark.parametrize("model_type,class_name,attn", list(cases()))
def test_truncation_keeps_first_layers_and_their_outputs(model_type, class_name, attn):
    full = build(class_name, tiny_config(model_type, attn=attn))
    adapter = get_adapter(full)
    truncated = copy.deepcopy(full)
    adapter.truncate_layers(truncated, 2)

    assert len(adapter.layers(truncated)) == 2
    assert adapter.num_layers(truncated.config) == 2
    assert adapter.num_layers(adapter.base_model(truncated).config) == 2
    if model_type == "distilbert":
        assert truncated.config.n_layers == 2
    # the truncated layers against the first 2 of the full model
    for kept, original in zip(adapter.layers(truncated), adapter.layers(full), strict=False):
        for (name, a), (_, b) in zip(kept.state_dict().items(), original.state_dict().items(), strict=True):
            assert torch.equal(a, b), name

    ids, mask = batch()
    with torch.no_grad():
        ref = full(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        got = truncated(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(got) == 3
    for layer in range(3):
        torch.testing.assert_close(got[layer], ref[layer], rtol=0, atol=1e-6)


@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_embedding_modules(model_type):
    model = build(ARCHITECTURES[model_type][0], tiny_config(model_type))
    modules = get_adapter(model).embedding_modules(model)
    width = 16 if model_type == "electra" else HIDDEN
    has_token_types = model_type not in ("mpnet", "distilbert")
    expected = {"word", "position", "layer_norm"} | ({"token_type"} if has_token_types else set())
    assert set(modules) == expected
    assert modules["word"].weight.shape == (VOCAB, width)
    assert modules["position"].weight.shape == (64, width)
    assert isinstance(modules["layer_norm"], nn.LayerNorm) and modules["layer_norm"].weight.shape == (width,)


def test_adapter_from_config_and_head_model_agree():
    config = tiny_config("bert")
    head = build("BertForMaskedLM", config)
    assert get_adapter(config) is get_adapter(head)
    assert get_adapter(config).qkv(head, 1)[0] is head.bert.encoder.layer[1].attention.self.query


def test_qkv_index_out_of_range():
    model = build("BertModel", tiny_config("bert"))
    with pytest.raises(IndexError, match="has 3 layers"):
        get_adapter(model).qkv(model, 3)


def test_truncate_out_of_range():
    model = build("BertModel", tiny_config("bert"))
    with pytest.raises(ValueError, match=r"has 3; choose 1\.\.3"):
        get_adapter(model).truncate_layers(model, 4)


def test_unsupported_architecture_names_class_and_supported_types():
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=16)
    model = transformers.GPT2Model(config)
    with pytest.raises(ValueError) as info:
        get_adapter(model)
    message = str(info.value)
    assert "GPT2Model" in message and "'gpt2'" in message
    for model_type in ("bert", "roberta", "xlm-roberta", "electra", "mpnet", "distilbert"):
        assert model_type in message
    with pytest.raises(ValueError, match="GPT2Config"):
        get_adapter(config)
