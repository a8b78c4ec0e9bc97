"""Per-architecture facts: where Q/K/V live, which modules are the layers, how to drop layers.

Everything else in the package (teacher, student, objective) asks an `EncoderAdapter` instead
of spelling a module path. One adapter describes one layout of the Hugging Face transformers
source (checked against transformers 5.x); it is chosen by `config.model_type`, and works for
the base model (`BertModel`) and for any head model around it (`BertForMaskedLM`, ...), with
any attention implementation (the projections are plain `nn.Linear` modules in all of them).

Paths are dotted attribute paths: `layers_path` and `embeddings` relative to the base model,
`qkv_paths` relative to one layer. `qkv_paths` names three linears (query, key, value) or one
fused linear whose output is [query | key | value] along the last axis (ModernBERT's `Wqkv`):
`split_qkv` cuts such an output into the three. Which parameters stack several blocks along
their first axis (`fused_blocks`: Wqkv's three, a gated MLP's two) matters when a narrower
student copies the teacher's weights (distill.student slices each block on its own).

What is captured, per family (the README's adapter table lists the same):
- BERT, RoBERTa, XLM-R, CamemBERT, ELECTRA, MPNet, DistilBERT: the query, key and value
  linears of the chosen layer (their outputs, i.e. before the heads are split).
- DeBERTa-v2/v3: the content projections `query_proj`, `key_proj`, `value_proj`. The
  disentangled relative-position terms (content-to-position and position-to-content scores
  from `rel_embeddings`) are added to the attention scores only; they are not part of Q, K or V,
  so the relations carry no position term of their own. The student inherits `rel_embeddings`
  (and its LayerNorm) and so computes the same kind of position scores in its attention.
- ModernBERT: the fused `Wqkv` output cut into Q, K, V *before* the rotary embedding. RoPE is a
  fixed, parameter-free rotation by position that the student applies itself; the relations
  compare what the layer's weights compute from the tokens (as for DeBERTa's content
  projections). Rotated vectors would fold each attention head's rotation frequencies into
  the relation, which a student with a different head width cannot reproduce, and relation
  heads that do not coincide with attention heads would cut RoPE's rotation pairs apart.

    adapter = get_adapter(model)          # or get_adapter(model.config)
    q, k, v = adapter.qkv(model, 0)       # the first layer's projections
    adapter.truncate_layers(model, 4)     # keep layers 1..4, config updated
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .errors import ConfigError, UnsupportedEncoder

__all__ = ["EncoderAdapter", "get_adapter", "SUPPORTED_MODEL_TYPES", "UnsupportedEncoder", "check_supported",
           "modernbert_layer_types"]


@dataclass(frozen=True)
class EncoderAdapter:
    """Where one encoder architecture keeps its layers, Q/K/V projections and embeddings."""

    name: str
    """Layout name, for messages (e.g. "bert")."""
    layers_path: str
    """The `nn.ModuleList` of layers, relative to the base model."""
    qkv_paths: tuple[str, ...]
    """The query, key and value `nn.Linear` of one layer, relative to that layer; or one fused linear
    whose output is [query | key | value] along the last axis."""
    embeddings: Mapping[str, str]
    """Embedding modules by role (word, position, token_type, layer_norm), relative to the base model."""
    layers_field: str = "num_hidden_layers"
    """Config field holding the number of layers."""
    hidden_field: str = "hidden_size"
    """Config field holding the width."""
    heads_field: str = "num_attention_heads"
    """Config field holding the number of attention heads."""
    intermediate_field: str = "intermediate_size"
    """Config field holding the feed-forward width."""
    embedding_size_field: str | None = None
    """Config field of a factorised embedding width (ELECTRA), if the architecture has one."""
    takes_token_type_ids: bool = True
    """Whether the base model's forward accepts `token_type_ids`."""
    sinusoidal_positions_field: str | None = None
    """Config flag that makes the position embeddings fixed sinusoids (DistilBERT)."""
    fused_blocks: tuple[tuple[str, int], ...] = ()
    """(parameter name relative to a layer, blocks): parameters stacking that many equal blocks along
    their first axis (ModernBERT: ("attn.Wqkv.weight", 3), ("mlp.Wi.weight", 2))."""
    mlp_matrices: int = 2
    """Weight matrices of hidden x intermediate in the feed-forward block (3 for a gated MLP), for FLOP counts."""
    configure_student: Callable[..., None] | None = None
    """configure_student(student_config, teacher_config, layer_map): fields beyond the shape that a
    student's config must change (DeBERTa's pooler width, ModernBERT's layer types)."""
    default_layer_map: Callable[[object, int], list[int]] | None = None
    """default_layer_map(teacher_config, student_layers): the architecture's own choice of teacher layers
    (1-based); None means evenly spaced (distill.student.default_layer_map)."""

    # -- modules ---------------------------------------------------------------------------
    @staticmethod
    def base_model(model: nn.Module) -> nn.Module:
        """The encoder inside a head model (`BertForMaskedLM` -> its `BertModel`); a base model itself."""
        prefix = getattr(model, "base_model_prefix", "")
        return getattr(model, prefix, model) if prefix else model

    def layers(self, model: nn.Module) -> nn.ModuleList:
        """The encoder's layers, in order (index 0 is the layer right above the embeddings)."""
        return _get(self.base_model(model), self.layers_path)

    def qkv(self, model: nn.Module, layer_index0: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        """The (query, key, value) projections of layer `layer_index0` (0-based)."""
        layers = self.layers(model)
        if not 0 <= layer_index0 < len(layers):
            raise IndexError(f"layer index {layer_index0} (0-based) is out of range: "
                             f"{type(model).__name__} has {len(layers)} layers")
        layer = layers[layer_index0]
        return tuple(_get(layer, path) for path in self.qkv_paths)  # type: ignore[return-value]

    @property
    def fused_qkv(self) -> bool:
        """Whether one linear computes query, key and value together."""
        return len(self.qkv_paths) == 1

    @staticmethod
    def split_qkv(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A fused projection's output [..., 3H] cut into (q, k, v), each [..., H] and contiguous."""
        q, k, v = output.chunk(3, dim=-1)
        return q.contiguous(), k.contiguous(), v.contiguous()

    def blocks_of(self, name_in_layer: str) -> int:
        """How many equal blocks a layer parameter stacks along its first axis (1 for most)."""
        return dict(self.fused_blocks).get(name_in_layer, 1)

    def embedding_modules(self, model: nn.Module, config=None) -> dict[str, nn.Module]:
        """The embedding modules by role: word, position (unless fixed sinusoids), token_type, layer_norm.

        Public API for callers that inspect or re-initialise a model's embeddings; the package
        itself copies them by parameter name (distill.student).
        """
        config = config if config is not None else model.config
        base = self.base_model(model)
        roles = dict(self.embeddings)
        if self.sinusoidal_positions_field and getattr(config, self.sinusoidal_positions_field, False):
            roles.pop("position", None)
        found = {role: _get(base, path, None) for role, path in roles.items()}
        return {role: module for role, module in found.items() if module is not None}

    def truncate_layers(self, model: nn.Module, num_layers: int) -> None:
        """Keep the first `num_layers` layers, in place, and set the config's layer count.

        The dropped layers are no longer referenced by the model, so their memory is released
        once nothing else holds them.
        """
        layers = self.layers(model)
        if not 1 <= num_layers <= len(layers):
            raise ConfigError(f"cannot keep {num_layers} layers of {type(model).__name__}: "
                              f"it has {len(layers)}; choose 1..{len(layers)}")
        parent_path, _, attr = self.layers_path.rpartition(".")
        parent = _get(self.base_model(model), parent_path) if parent_path else self.base_model(model)
        setattr(parent, attr, nn.ModuleList(list(layers)[:num_layers]))
        for config in {id(c): c for c in (model.config, getattr(self.base_model(model), "config", None))
                       if c is not None}.values():
            setattr(config, self.layers_field, num_layers)
            types = getattr(config, "layer_types", None)  # per-layer attention types (ModernBERT)
            if isinstance(types, (list, tuple)) and len(types) > num_layers:
                config.layer_types = list(types)[:num_layers]

    # -- config ----------------------------------------------------------------------------
    def num_layers(self, config) -> int:
        return int(getattr(config, self.layers_field))

    def hidden_size(self, config) -> int:
        return int(getattr(config, self.hidden_field))

    def num_attention_heads(self, config) -> int:
        return int(getattr(config, self.heads_field))

    def intermediate_size(self, config) -> int:
        return int(getattr(config, self.intermediate_field))

    def max_positions(self, config) -> int | None:
        """The longest sequence the model takes: its absolute position table (less RoBERTa's padding
        offset); None where it has no absolute positions (DeBERTa-v3's relative buckets)."""
        if config.model_type == "deberta-v2" and not getattr(config, "position_biased_input", True):
            return None
        positions = getattr(config, "max_position_embeddings", None)
        if positions is None:
            return None
        if config.model_type == "mpnet":  # positions start after its padding index, fixed at 1
            positions -= 2
        elif config.model_type in _PADDING_OFFSET_TYPES:  # positions start after the padding id
            positions -= int(getattr(config, "pad_token_id", 1) or 0) + 1
        return int(positions)

    def local_window(self, config) -> int | None:
        """Tokens a local-attention layer sees (ModernBERT's `local_attention`), None without local layers."""
        if self.name != "modernbert" or "sliding_attention" not in modernbert_layer_types(config):
            return None
        return int(config.local_attention)


_MISSING = object()


def _get(root: nn.Module, path: str, default=_MISSING):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None) if default is not _MISSING else getattr(obj, part)
        if obj is None and default is not _MISSING:
            return default
    return obj


_PADDING_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "mpnet", "roberta-prelayernorm", "xlm-roberta-xl"}

_BERT_EMBEDDINGS = {
    "word": "embeddings.word_embeddings",
    "position": "embeddings.position_embeddings",
    "token_type": "embeddings.token_type_embeddings",
    "layer_norm": "embeddings.LayerNorm",
}
_BERT_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")

_BERT = EncoderAdapter("bert", "encoder.layer", _BERT_QKV, _BERT_EMBEDDINGS)
_ELECTRA = EncoderAdapter("electra", "encoder.layer", _BERT_QKV, _BERT_EMBEDDINGS,
                          embedding_size_field="embedding_size")
_MPNET = EncoderAdapter(
    "mpnet", "encoder.layer", ("attention.attn.q", "attention.attn.k", "attention.attn.v"),
    {k: v for k, v in _BERT_EMBEDDINGS.items() if k != "token_type"},
    takes_token_type_ids=False,
)
_DISTILBERT = EncoderAdapter(
    "distilbert", "transformer.layer", ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
    {k: v for k, v in _BERT_EMBEDDINGS.items() if k != "token_type"},
    layers_field="n_layers", hidden_field="dim", heads_field="n_heads", intermediate_field="hidden_dim",
    takes_token_type_ids=False, sinusoidal_positions_field="sinusoidal_pos_embds",
)

def modernbert_layer_types(config) -> list[str]:
    """ModernBERT's attention type per layer ("full_attention" or "sliding_attention"), from `layer_types`
    where the config has it, else from `global_attn_every_n_layers` (layer i is global when i % n == 0)."""
    depth = int(config.num_hidden_layers)
    types = getattr(config, "layer_types", None)
    if types is not None and len(types) >= depth:
        return list(types[:depth])
    every = int(getattr(config, "global_attn_every_n_layers", 3) or 1)
    return ["full_attention" if i % every == 0 else "sliding_attention" for i in range(depth)]


def _period(types: Sequence[str]) -> int | None:
    """n where `types` is the regular pattern "global every n layers from the first", else None."""
    for every in range(1, len(types) + 1):
        if all((t == "full_attention") == (i % every == 0) for i, t in enumerate(types)):
            return every
    return None


def _modernbert_layer_map(teacher_config, student_layers: int) -> list[int]:
    """Teacher layers for a ModernBERT student whose layers keep the teacher's regular local/global
    pattern (global every n layers from the first): student layer i takes the teacher layer of its own
    attention type nearest to the evenly spaced choice ceil(i * T / L) (ties: the higher one), so every
    student layer starts from weights trained for the attention it will run."""
    types = modernbert_layer_types(teacher_config)
    depth = len(types)
    evenly = [math.ceil(i * depth / student_layers) for i in range(1, student_layers + 1)]
    every = _period(types)
    if every is None:  # an irregular teacher: evenly spaced; the student's layers take the inherited types
        return evenly
    chosen = []
    for i, target in enumerate(evenly):
        wanted = "full_attention" if i % every == 0 else "sliding_attention"
        candidates = [j + 1 for j, t in enumerate(types) if t == wanted] or [target]
        chosen.append(min(candidates, key=lambda j: (abs(j - target), -j)))
    return chosen


def _modernbert_attention_from_period() -> bool:
    """Whether the installed transformers decides ModernBERT's local/global attention per layer from
    `global_attn_every_n_layers` (5.0) rather than from `layer_types` (later 5.x)."""
    import inspect

    from transformers.models.modernbert import modeling_modernbert

    return "global_attn_every_n_layers" in inspect.getsource(modeling_modernbert.ModernBertAttention.__init__)


def _configure_modernbert_student(config, teacher_config, layer_map: Sequence[int] | None) -> None:
    """The student's layer types: those of the teacher layers it inherits (layer_map), or the teacher's
    regular pattern at the student's depth (random init). ValueError where the installed transformers
    cannot run that pattern."""
    t_types = modernbert_layer_types(teacher_config)
    depth = int(config.num_hidden_layers)
    if layer_map is not None:
        types = [t_types[m - 1] for m in layer_map]
    else:
        every = _period(t_types) or int(getattr(teacher_config, "global_attn_every_n_layers", 3) or 1)
        types = ["full_attention" if i % every == 0 else "sliding_attention" for i in range(depth)]
    every = _period(types)
    if every is None and _modernbert_attention_from_period():
        import transformers

        raise ConfigError(f"the student's layers would inherit the attention types {types}, which transformers "
                          f"{transformers.__version__} cannot run (it makes layer i global when i % "
                          f"global_attn_every_n_layers == 0): use the default layer_map, or a newer transformers")
    config.layer_types = types
    if every is not None:
        config.global_attn_every_n_layers = every


def _configure_deberta_student(config, teacher_config, layer_map: Sequence[int] | None) -> None:
    """DeBERTa's sequence-classification pooler reads `pooler_hidden_size`; an explicit
    `attention_head_size` follows the student's heads."""
    hidden = int(config.hidden_size)
    t_hidden = int(teacher_config.hidden_size)
    t_pooler = getattr(teacher_config, "pooler_hidden_size", t_hidden)
    config.pooler_hidden_size = hidden if t_pooler == t_hidden else min(int(t_pooler), hidden)
    if getattr(config, "attention_head_size", None) is not None:
        config.attention_head_size = hidden // int(config.num_attention_heads)


_DEBERTA_V2 = EncoderAdapter(
    "deberta-v2", "encoder.layer",
    ("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"),
    {"word": "embeddings.word_embeddings", "position": "embeddings.position_embeddings",
     "token_type": "embeddings.token_type_embeddings", "layer_norm": "embeddings.LayerNorm",
     "relative_position": "encoder.rel_embeddings", "relative_position_layer_norm": "encoder.LayerNorm"},
    embedding_size_field="embedding_size",
    configure_student=_configure_deberta_student,
)
_MODERNBERT = EncoderAdapter(
    "modernbert", "layers", ("attn.Wqkv",),
    {"word": "embeddings.tok_embeddings", "layer_norm": "embeddings.norm"},
    takes_token_type_ids=False,
    mlp_matrices=3,
    fused_blocks=(("attn.Wqkv.weight", 3), ("attn.Wqkv.bias", 3), ("mlp.Wi.weight", 2), ("mlp.Wi.bias", 2)),
    configure_student=_configure_modernbert_student,
    default_layer_map=_modernbert_layer_map,
)

_ADAPTERS: dict[str, EncoderAdapter] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "camembert": _BERT,
    "ernie": _BERT,
    "roberta-prelayernorm": _BERT,  # pre-LayerNorm: Q/K/V read the layer's own LayerNorm of its input
    "xlm-roberta-xl": _BERT,
    "electra": _ELECTRA,
    "mpnet": _MPNET,
    "distilbert": _DISTILBERT,
    "deberta-v2": _DEBERTA_V2,
    "modernbert": _MODERNBERT,
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_ADAPTERS))

# Encoders users load as teachers that do not fit an adapter: why, and what support would take.
_NOT_SUPPORTED: dict[str, str] = {
    "albert": "ALBERT shares one layer's weights across all its layers, so a student cannot take an evenly "
              "spaced slice of distinct layers, and the projections run once per layer on the same module; "
              "supporting it takes a capture that counts the shared layer's calls and a student that unshares "
              "them",
    "deberta": "DeBERTa v1 computes Q, K and V with one interleaved projection (in_proj) plus separate q/v biases; "
               "use a DeBERTa-v2/v3 model (model_type deberta-v2), or add an adapter that un-interleaves in_proj",
    "nomic_bert": "NomicBERT (remote code on the hub, native only in recent transformers releases) has its own "
                  "layout: rotary positions and, in the remote code, a fused Wqkv; supporting it takes an adapter "
                  "naming its layers and projections (like ModernBERT's), for the layout the installed "
                  "transformers loads",
    "new": "this (gte-style 'new') model is remote code with its own layout; supporting it takes an adapter for "
           "its layers and fused qkv projection, loaded with trust_remote_code",
    "jina_bert": "JinaBERT is remote code with ALiBi attention; supporting it takes an adapter for its layout, "
                 "loaded with trust_remote_code",
    "longformer": "Longformer's sliding-window attention keeps separate global projections; supporting it takes an "
                  "adapter choosing which projections to capture",
    "xlnet": "XLNet is a permutation language model with two attention streams, not an encoder this recipe fits",
}


def check_supported(model_or_config, what: str = "teacher") -> EncoderAdapter:
    """The adapter for `model_or_config`; `UnsupportedEncoder` naming the model type, the supported
    list and what support would take otherwise."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    adapter = _ADAPTERS.get(model_type)
    if adapter is not None:
        return adapter
    name = type(model_or_config).__name__
    reason = _NOT_SUPPORTED.get(model_type, "supporting it takes an EncoderAdapter in distill/encoders.py naming its "
                                            "layers, its Q/K/V projections and its embeddings")
    raise UnsupportedEncoder(f"{what} {name} (model_type {model_type!r}) is not a supported encoder; supported "
                             f"model_types: {', '.join(SUPPORTED_MODEL_TYPES)}. {reason[0].upper()}{reason[1:]}")


def get_adapter(model_or_config) -> EncoderAdapter:
    """The adapter for a model (base or head) or a config, chosen by `config.model_type`.

    Raises `UnsupportedEncoder` (a ValueError) naming the class, the supported model types and what
    support would take for any other architecture.
    """
    return check_supported(model_or_config, "model")
