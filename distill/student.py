"""create_student: a smaller encoder of the teacher's architecture, initialised from it or at random.

The student is the teacher's base model class (`BertModel` for a `BertForMaskedLM` teacher) with
the teacher's config except the shape: layers, width, heads, feed-forward width. Vocabulary,
padding id, position and token-type tables, activation, layer-norm epsilon and dropout stay the
teacher's, so the teacher's tokenizer serves the student.

init="teacher" (the default) copies, for every student parameter, the leading slice of the
teacher's matching parameter: `W[:h_out, :h_in]` for matrices, `b[:h]` for biases and LayerNorm,
`E[:, :h]` for embedding tables. A parameter that stacks several blocks along its first axis
(ModernBERT's fused Wqkv = [W_q; W_k; W_v], its gated MLP's Wi = [W_in; W_gate]) is sliced block
by block, so the student's query block comes from the teacher's query block. That covers the
embeddings (word, position, token type and their LayerNorm), the chosen teacher layers, and what
else both have (pooler, MPNet's relative position bias, ELECTRA's embedding projection,
DeBERTa's relative-position embeddings and their LayerNorm, ModernBERT's final norm). Where the
student is larger along some axis (MPNet's relative-bias table with more heads), the overlap is
copied and the rest keeps the architecture's init; fixed sinusoidal position tables (DistilBERT
`sinusoidal_pos_embds`) are rebuilt, not sliced.

Layer choice (`default_layer_map`): student layer i (1-based, of L) starts from teacher layer
ceil(i * T / L) of the T-layer teacher. These are evenly spaced and end at the teacher's top
layer: the student's last layer, whose Q/K/V are distilled, starts as the very layer it
imitates (pass `FrozenTeacher.model`, truncated at `teacher_layer`, to make that layer the
teacher's distilled one), and the layers below sample the teacher's depth uniformly, as
DistilBERT's one-layer-in-two initialisation does. With L == T it is the identity.
`layer_map` overrides it with any list of L teacher layers (1-based).

ModernBERT alternates global attention (every n-th layer, from the first) with local attention
in a sliding window. Its student keeps that regular pattern at its own depth, and its default
map takes, for each student layer, the teacher layer *of the same attention type* nearest to the
evenly spaced choice (ties: the higher), so each layer starts from weights trained for the
attention it runs; the student's config records the inherited types (`layer_types`). With an
explicit `layer_map` the student's layers take the types of the teacher layers they inherit.
The window (`local_attention`) stays the teacher's.
"""
from __future__ import annotations

import copy
import math
import os
import re
from typing import Sequence

import torch
from torch import nn

from .encoders import EncoderAdapter, get_adapter
from .errors import ConfigError, ConfigTypeError

__all__ = ["create_student", "default_layer_map"]

INITS = ("teacher", "random")


def default_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """1-based teacher layers for student layers 1..L: ceil(i * T / L), evenly spaced, last = T."""
    if not 1 <= student_layers <= teacher_layers:
        raise ConfigError(f"student_layers={student_layers} must be between 1 and teacher_layers={teacher_layers}")
    return [math.ceil(i * teacher_layers / student_layers) for i in range(1, student_layers + 1)]


def create_student(teacher, num_layers: int, hidden_size: int, num_attention_heads: int,
                   intermediate_size: int | None = None, init: str = "teacher",
                   layer_map: Sequence[int] | None = None) -> nn.Module:
    """A fresh student encoder of the teacher's base architecture, in float32 on CPU.

    Args:
        teacher: a model (base or head model), a `FrozenTeacher`, or a hub name / local directory.
        num_layers: student depth, 1..the teacher's depth.
        hidden_size: student width; a multiple of `num_attention_heads`; with init="teacher" at
            most the teacher's width.
        num_attention_heads: student attention heads.
        intermediate_size: feed-forward width; default keeps the teacher's ratio to the width
            (4 x hidden_size for BERT).
        init: "teacher" (leading slices of the teacher's weights, see the module docstring) or
            "random" (the architecture's own initialisation).
        layer_map: with init="teacher", the 1-based teacher layer each student layer starts from;
            default `default_layer_map(teacher depth, num_layers)`.

    Returns a model that saves with `save_pretrained` and loads back with `AutoModel.from_pretrained`.
    """
    if init not in INITS:
        raise ConfigError(f"init={init!r} is unknown: choose 'teacher' (copy slices of the teacher's weights) "
                          f"or 'random' (the architecture's own initialisation)")
    teacher_model, teacher_config = _resolve_teacher(teacher, need_weights=init == "teacher")
    adapter = get_adapter(teacher_config)
    t_layers = adapter.num_layers(teacher_config)
    t_hidden = adapter.hidden_size(teacher_config)
    t_inter = adapter.intermediate_size(teacher_config)

    _check_positive_int("num_layers", num_layers)
    _check_positive_int("hidden_size", hidden_size)
    _check_positive_int("num_attention_heads", num_attention_heads)
    if num_layers > t_layers:
        raise ConfigError(f"num_layers={num_layers} is out of range: the teacher has {t_layers} layers; "
                          f"choose 1..{t_layers}")
    if hidden_size % num_attention_heads:
        raise ConfigError(f"hidden_size={hidden_size} is not divisible by num_attention_heads={num_attention_heads}: "
                          f"use hidden_size {_nearby_multiples(hidden_size, num_attention_heads)}, or "
                          f"num_attention_heads among {_divisors(hidden_size)}")
    if init == "teacher" and hidden_size > t_hidden:
        raise ConfigError(f"hidden_size={hidden_size} is larger than the teacher's {t_hidden}: init='teacher' copies "
                          f"slices of the teacher's weights; use hidden_size <= {t_hidden} or init='random'")
    if intermediate_size is None:
        intermediate_size = max(1, round(hidden_size * t_inter / t_hidden))
    _check_positive_int("intermediate_size", intermediate_size)
    if init == "teacher" and intermediate_size > t_inter:
        raise ConfigError(f"intermediate_size={intermediate_size} is larger than the teacher's {t_inter}: "
                          f"use intermediate_size <= {t_inter} or init='random'")
    if layer_map is not None:
        if init != "teacher":
            raise ConfigError("layer_map chooses teacher layers to copy; it only applies with init='teacher'")
        layer_map = [int(x) for x in layer_map]
        if len(layer_map) != num_layers or not all(1 <= x <= t_layers for x in layer_map):
            raise ConfigError(f"layer_map={layer_map} must list {num_layers} teacher layers (one per student layer), "
                              f"each 1..{t_layers} (1-based)")

    if init == "teacher" and layer_map is None:
        layer_map = (adapter.default_layer_map(teacher_config, num_layers) if adapter.default_layer_map
                     else default_layer_map(t_layers, num_layers))
    config = _student_config(teacher_config, adapter, num_layers, hidden_size, num_attention_heads, intermediate_size)
    if adapter.configure_student is not None:
        adapter.configure_student(config, teacher_config, layer_map)
    if teacher_model is not None:
        student = type(adapter.base_model(teacher_model))(config)
    else:
        from transformers import AutoModel

        student = AutoModel.from_config(config)
    student = student.to(torch.float32)

    if init == "teacher":
        _copy_slices(adapter.base_model(teacher_model), student, adapter, layer_map, config)
    return student


def _resolve_teacher(teacher, need_weights: bool):
    """(model or None, config) of a model, a FrozenTeacher or a name/path (a missing path is named)."""
    from .teacher import FrozenTeacher

    if isinstance(teacher, FrozenTeacher):
        return teacher.model, teacher.config
    if isinstance(teacher, nn.Module):
        return teacher, teacher.config
    if isinstance(teacher, (str, os.PathLike)):
        from transformers import AutoConfig, AutoModel

        from .encoders import check_supported
        from .paths import model_load_error, resolve_model_source

        source = resolve_model_source(teacher, "teacher")
        try:
            config = AutoConfig.from_pretrained(source)
            check_supported(config, "teacher")  # before the weights are read
            model = AutoModel.from_pretrained(source, dtype=torch.float32) if need_weights else None
        except OSError as e:  # a hub name not found or not reachable, a directory without the weights
            raise model_load_error("teacher", source, e) from e
        return (model, model.config) if model is not None else (None, config)
    raise ConfigTypeError(f"teacher must be a model, a FrozenTeacher, a hub name or a directory, "
                          f"not {type(teacher).__name__}")


def _student_config(teacher_config, adapter: EncoderAdapter, num_layers: int, hidden_size: int,
                    num_attention_heads: int, intermediate_size: int):
    config = copy.deepcopy(teacher_config)
    setattr(config, adapter.layers_field, num_layers)
    setattr(config, adapter.hidden_field, hidden_size)
    setattr(config, adapter.heads_field, num_attention_heads)
    setattr(config, adapter.intermediate_field, intermediate_size)
    if adapter.embedding_size_field:
        # a factorised embedding (ELECTRA-small: 128 under 256) stays factorised, never wider than the student
        t_hidden = adapter.hidden_size(teacher_config)
        t_emb = getattr(teacher_config, adapter.embedding_size_field, None) or t_hidden
        setattr(config, adapter.embedding_size_field, hidden_size if t_emb == t_hidden else min(t_emb, hidden_size))
    config.architectures = None
    config._name_or_path = ""
    config.output_hidden_states = False
    config.output_attentions = False
    config.dtype = torch.float32
    return config


@torch.no_grad()
def _copy_slices(teacher: nn.Module, student: nn.Module, adapter: EncoderAdapter, layer_map: list[int], config) -> None:
    """Copy the leading slice of each teacher parameter into the student parameter of the same name
    (student layer i reading teacher layer layer_map[i])."""
    teacher_params = dict(teacher.named_parameters())
    layer_name = re.compile(rf"^{re.escape(adapter.layers_path)}\.(\d+)\.(.*)$")
    rebuilt = set()
    if adapter.sinusoidal_positions_field and getattr(config, adapter.sinusoidal_positions_field, False):
        rebuilt.add(adapter.embeddings["position"] + ".weight")
    for name, param in student.named_parameters():
        if name in rebuilt:
            continue
        match = layer_name.match(name)
        source_name = (f"{adapter.layers_path}.{layer_map[int(match.group(1))] - 1}.{match.group(2)}"
                       if match else name)
        source = teacher_params.get(source_name)
        if source is None or source.dim() != param.dim():
            continue
        blocks = adapter.blocks_of(match.group(2)) if match else 1
        for s_block, t_block in zip(param.chunk(blocks, dim=0), source.chunk(blocks, dim=0), strict=True):
            overlap = tuple(slice(0, min(s, t)) for s, t in zip(s_block.shape, t_block.shape, strict=True))
            s_block[overlap].copy_(t_block[overlap])


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def _nearby_multiples(hidden_size: int, heads: int) -> str:
    below = hidden_size - hidden_size % heads
    above = below + heads
    return f"{below} or {above}" if below > 0 else f"{above}"
