"""Per-architecture facts: where Q/K/V live, which modules are the layers, how to drop layers.

Everything else in the package (teacher, student, objective) asks an `EncoderAdapter` instead
of spelling a module path. One adapter describes one layout of the Hugging Face transformers
source (checked against transformers 5.x); it is chosen by `config.model_type`, and works for
the base model (`BertModel`) and for any head model around it (`BertForMaskedLM`, ...), with
any attention implementation (the projections are plain `nn.Linear` modules in all of them).

Paths are dotted attribute paths: `layers_path` and `embeddings` relative to the base model,
`qkv_paths` relative to one layer.

    adapter = get_adapter(model)          # or get_adapter(model.config)
    q, k, v = adapter.qkv(model, 0)       # the first layer's projections
    adapter.truncate_layers(model, 4)     # keep layers 1..4, config updated
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from torch import nn

__all__ = ["EncoderAdapter", "get_adapter", "SUPPORTED_MODEL_TYPES"]


@dataclass(frozen=True)
class EncoderAdapter:
    """Where one encoder architecture keeps its layers, Q/K/V projections and embeddings."""

    name: str
    """Layout name, for messages (e.g. "bert")."""
    layers_path: str
    """The `nn.ModuleList` of layers, relative to the base model."""
    qkv_paths: tuple[str, str, str]
    """The query, key and value `nn.Linear` of one layer, relative to that layer."""
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
        return {role: _get(base, path) for role, path in roles.items()}

    def truncate_layers(self, model: nn.Module, num_layers: int) -> None:
        """Keep the first `num_layers` layers, in place, and set the config's layer count.

        The dropped layers are no longer referenced by the model, so their memory is released
        once nothing else holds them.
        """
        layers = self.layers(model)
        if not 1 <= num_layers <= len(layers):
            raise ValueError(f"cannot keep {num_layers} layers of {type(model).__name__}: "
                             f"it has {len(layers)}; choose 1..{len(layers)}")
        parent_path, _, attr = self.layers_path.rpartition(".")
        parent = _get(self.base_model(model), parent_path) if parent_path else self.base_model(model)
        setattr(parent, attr, nn.ModuleList(list(layers)[:num_layers]))
        setattr(model.config, self.layers_field, num_layers)
        base_config = getattr(self.base_model(model), "config", None)
        if base_config is not None and base_config is not model.config:
            setattr(base_config, self.layers_field, num_layers)

    # -- config ----------------------------------------------------------------------------
    def num_layers(self, config) -> int:
        return int(getattr(config, self.layers_field))

    def hidden_size(self, config) -> int:
        return int(getattr(config, self.hidden_field))

    def num_attention_heads(self, config) -> int:
        return int(getattr(config, self.heads_field))

    def intermediate_size(self, config) -> int:
        return int(getattr(config, self.intermediate_field))


def _get(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


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

_ADAPTERS: dict[str, EncoderAdapter] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "camembert": _BERT,
    "electra": _ELECTRA,
    "mpnet": _MPNET,
    "distilbert": _DISTILBERT,
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_ADAPTERS))


def get_adapter(model_or_config) -> EncoderAdapter:
    """The adapter for a model (base or head) or a config, chosen by `config.model_type`.

    Raises ValueError naming the class and the supported model types for any other architecture.
    """
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    adapter = _ADAPTERS.get(model_type)
    if adapter is None:
        raise ValueError(
            f"{type(model_or_config).__name__} (model_type {model_type!r}) is not a supported encoder; "
            f"supported model_types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return adapter
