"""Per-architecture adapters: Q/K/V locations, layers, truncation, embeddings, unsupported models."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import transformers
from helpers import padded_batch
from torch import nn
from transformers import AutoConfig

from distill.encoders import SUPPORTED_MODEL_TYPES, UnsupportedEncoder, check_supported, get_adapter
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
    "deberta-v2": ("DebertaV2Model", ["DebertaV2ForMaskedLM", "DebertaV2ForSequenceClassification"]),
    "modernbert": ("ModernBertModel", ["ModernBertForMaskedLM", "ModernBertForSequenceClassification"]),
    # BERT's layout under other names: ERNIE, and the pre-LayerNorm RoBERTa variants (XLM-R XL/XXL)
    "ernie": ("ErnieModel", ["ErnieForMaskedLM"]),
    "roberta-prelayernorm": ("RobertaPreLayerNormModel", ["RobertaPreLayerNormForMaskedLM"]),
    "xlm-roberta-xl": ("XLMRobertaXLModel", ["XLMRobertaXLForSequenceClassification"]),
}
# the norm after the last layer, by attribute of the base model (pre-LayerNorm encoders and ModernBERT)
FINAL_NORMS = {"modernbert": "final_norm", "roberta-prelayernorm": "LayerNorm", "xlm-roberta-xl": "encoder.LayerNorm"}
NO_SDPA = {"mpnet", "deberta-v2"}  # eager-only in transformers 5.x
BUCKETS = 8  # DeBERTa's relative-position buckets: rel_embeddings has 2 * BUCKETS rows
WINDOW = 8  # ModernBERT's local_attention (a sliding layer sees +-4 tokens): shorter than the batch's 9
# the DeBERTa-v3 layout: relative attention only (no absolute positions, no token types), shared keys
DEBERTA_V3 = dict(relative_attention=True, position_buckets=BUCKETS, norm_rel_ebd="layer_norm", share_att_key=True,
                  pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0)
MODERNBERT = dict(local_attention=WINDOW, global_attn_every_n_layers=3, pad_token_id=0, cls_token_id=1,
                  sep_token_id=2, bos_token_id=1, eos_token_id=2)


def tiny_config(model_type: str, layers: int = LAYERS, attn: str = "eager"):
    if model_type == "distilbert":
        shape = dict(dim=HIDDEN, n_layers=layers, n_heads=HEADS, hidden_dim=FFN)
    else:
        shape = dict(hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS, intermediate_size=FFN)
    if model_type == "electra":
        shape["embedding_size"] = 16  # factorised embedding: exercises embeddings_project
    shape.update({"deberta-v2": DEBERTA_V3, "modernbert": MODERNBERT}.get(model_type, {}))
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
    return padded_batch(VOCAB, 2, 9, {1: 6})  # a padded row


def test_every_supported_type_is_tested():
    assert set(SUPPORTED_MODEL_TYPES) == set(ARCHITECTURES)


def projections_of(model, model_type: str, layer_index0: int, layer_input: torch.Tensor) -> list[torch.Tensor]:
    """What the layer's attention projects its input to, spelled per architecture (not through the adapter)."""
    layer = get_adapter(model).layers(model)[layer_index0]
    if model_type == "modernbert":  # one fused [q | k | v] linear after the pre-attention norm, before RoPE
        qkv = layer.attn.Wqkv(layer.attn_norm(layer_input))
        return [qkv[..., :HIDDEN], qkv[..., HIDDEN:2 * HIDDEN], qkv[..., 2 * HIDDEN:]]
    if model_type == "deberta-v2":  # the content projections (its attention calls query/key_proj again later)
        attention = layer.attention.self
        return [attention.query_proj(layer_input), attention.key_proj(layer_input), attention.value_proj(layer_input)]
    if model_type == "roberta-prelayernorm":  # pre-LayerNorm: the projections read the attention's own LayerNorm
        layer_input = layer.attention.LayerNorm(layer_input)
    if model_type == "xlm-roberta-xl":
        layer_input = layer.attention.self_attn_layer_norm(layer_input)
    return [linear(layer_input) for linear in get_adapter(model).qkv(model, layer_index0)]


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
    linears = [linear for layer in range(LAYERS) for linear in adapter.qkv(model, layer)]
    assert all(isinstance(linear, nn.Linear) for linear in linears)
    assert len(linears) == LAYERS * (1 if model_type == "modernbert" else 3)
    assert adapter.fused_qkv == (model_type == "modernbert")

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
            got = capture.pop()
            assert len(got) == 3
            for g, expected in zip(got, projections_of(model, model_type, layer, layer_input), strict=True):
                assert g.shape == (2, 9, HIDDEN)
                torch.testing.assert_close(g, expected, rtol=0, atol=1e-6)
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

    if model_type == "modernbert":  # the per-layer attention types follow the kept layers
        assert truncated.config.layer_types == ["full_attention", "sliding_attention"]

    ids, mask = batch()
    with torch.no_grad():
        ref = list(full(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states)
        got = truncated(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        base_out = adapter.base_model(truncated)(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        norm = FINAL_NORMS.get(model_type)
        if norm and torch.equal(base_out.hidden_states[-1], base_out.last_hidden_state):
            # models with a final norm after the last layer: later 5.x report the last hidden state after it
            module = adapter.base_model(full)
            for part in norm.split("."):
                module = getattr(module, part)
            ref[2] = module(ref[2])
    assert len(got) == 3
    for layer in range(3):
        torch.testing.assert_close(got[layer], ref[layer], rtol=0, atol=1e-6)


@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_embedding_modules(model_type):
    model = build(ARCHITECTURES[model_type][0], tiny_config(model_type))
    modules = get_adapter(model).embedding_modules(model)
    width = 16 if model_type == "electra" else HIDDEN
    if model_type == "deberta-v2":  # v3: relative positions only, no token types
        expected = {"word", "layer_norm", "relative_position", "relative_position_layer_norm"}
    elif model_type == "modernbert":  # rotary positions (no table), no token types
        expected = {"word", "layer_norm"}
    elif model_type == "xlm-roberta-xl":  # pre-LayerNorm without an embedding LayerNorm
        expected = {"word", "position", "token_type"}
    else:
        has_token_types = model_type not in ("mpnet", "distilbert")
        expected = {"word", "position", "layer_norm"} | ({"token_type"} if has_token_types else set())
    assert set(modules) == expected
    assert modules["word"].weight.shape == (VOCAB, width)
    if "position" in modules:
        assert modules["position"].weight.shape == (64, width)
    if "layer_norm" in modules:
        assert isinstance(modules["layer_norm"], nn.LayerNorm) and modules["layer_norm"].weight.shape == (width,)
    base = get_adapter(model).base_model(model)
    if model_type == "deberta-v2":
        assert modules["relative_position"] is base.encoder.rel_embeddings
        assert modules["relative_position"].weight.shape == (2 * BUCKETS, HIDDEN)
        assert modules["relative_position_layer_norm"] is base.encoder.LayerNorm
        assert modules["layer_norm"] is base.embeddings.LayerNorm
    if model_type == "modernbert":
        assert modules["word"] is base.embeddings.tok_embeddings and modules["layer_norm"] is base.embeddings.norm


def test_deberta_v2_style_embeddings_have_positions_and_token_types():
    config = tiny_config("deberta-v2")
    config.position_biased_input, config.type_vocab_size = True, 2  # the DeBERTa-v2 layout
    model = build("DebertaV2Model", config)
    modules = get_adapter(model).embedding_modules(model)
    assert set(modules) == {"word", "position", "token_type", "layer_norm", "relative_position",
                            "relative_position_layer_norm"}
    assert modules["position"].weight.shape == (64, HIDDEN) and modules["token_type"].weight.shape == (2, HIDDEN)


def test_max_positions_and_local_window():
    bert = get_adapter(tiny_config("bert"))
    assert bert.max_positions(tiny_config("bert")) == 64 and bert.local_window(tiny_config("bert")) is None
    roberta = tiny_config("roberta")
    assert get_adapter(roberta).max_positions(roberta) == 64 - roberta.pad_token_id - 1  # positions after padding

    v3 = tiny_config("deberta-v2")
    assert get_adapter(v3).max_positions(v3) is None  # relative buckets: no absolute table limits the length
    v2 = copy.deepcopy(v3)
    v2.position_biased_input = True
    assert get_adapter(v2).max_positions(v2) == 64 and get_adapter(v2).local_window(v2) is None

    modern = tiny_config("modernbert")
    assert get_adapter(modern).max_positions(modern) == 64
    assert get_adapter(modern).local_window(modern) == WINDOW
    all_global = tiny_config("modernbert")
    all_global.layer_types = ["full_attention"] * LAYERS
    assert get_adapter(all_global).local_window(all_global) is None


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


@pytest.mark.parametrize("config,model_type,remedy", [
    (transformers.AlbertConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64),
     "albert", "shares one layer's weights across all its layers"),
    (transformers.DebertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64),
     "deberta", "use a DeBERTa-v2/v3 model (model_type deberta-v2)"),
    (type("MadeUpConfig", (transformers.PretrainedConfig,), {"model_type": "made-up-encoder"})(),
     "made-up-encoder", "Supporting it takes an EncoderAdapter in distill/encoders.py"),
], ids=["albert", "deberta-v1", "made-up"])
def test_unsupported_model_types_say_what_support_would_take(config, model_type, remedy):
    for call in (get_adapter, check_supported):
        with pytest.raises(UnsupportedEncoder) as info:
            call(config)
        assert isinstance(info.value, ValueError)
        message = str(info.value)
        assert f"(model_type {model_type!r}) is not a supported encoder" in message
        assert type(config).__name__ in message
        assert f"supported model_types: {', '.join(SUPPORTED_MODEL_TYPES)}." in message
        assert "deberta-v2" in message and "modernbert" in message
        assert remedy in message
    with pytest.raises(UnsupportedEncoder, match=r"^teacher "):
        check_supported(config, "teacher")


@pytest.mark.parametrize("class_name", ["AlbertModel", "DebertaModel"])
def test_unsupported_model_objects_are_named_by_class(class_name):
    config_class = getattr(transformers, class_name.replace("Model", "Config"))
    config = config_class(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=64)
    model = getattr(transformers, class_name)(config)
    with pytest.raises(UnsupportedEncoder, match=rf"^model {class_name} \(model_type"):
        get_adapter(model)
