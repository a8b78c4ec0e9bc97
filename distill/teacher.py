"""The frozen teacher, and the forward hooks that capture one layer's Q/K/V projections.

`FrozenTeacher` loads (or takes) an encoder, keeps its base model only, drops every layer above
`teacher_layer`, freezes it and casts it (float16 on CUDA, float32 on CPU by default). Calling it
runs the encoder only as far as it must: `QKVCapture(stop_forward=True)` interrupts the forward
once the query, key and value projections of `teacher_layer` have run, so that layer's attention
and feed-forward block are never computed.

    teacher = FrozenTeacher("google-bert/bert-base-uncased", teacher_layer=12)
    q, k, v = teacher(input_ids, attention_mask)   # each [B, S, 768], no autograd graph
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .encoders import EncoderAdapter, get_adapter
from .errors import ConfigError, ConfigTypeError
from .paths import HUB_EXAMPLE, model_load_error, resolve_model_source  # noqa: F401 (re-exported)

__all__ = ["QKVCapture", "FrozenTeacher", "repad", "resolve_dtype", "resolve_model_source"]

class _StopForward(Exception):
    """Raised by a capture hook once Q, K and V are in hand; swallowed by `QKVCapture.__exit__`."""


class QKVCapture:
    """Forward hooks on the query, key and value `nn.Linear` of one layer.

    The hooks record only inside `with capture:` (so other forward passes, or the recomputation
    of a gradient-checkpointed layer during backward, keep nothing alive), and only a projection's
    first call in it (DeBERTa-v2 calls query_proj and key_proj again on its relative-position
    embeddings, after the layer's own Q/K/V); `pop()` hands the
    three outputs over and forgets them. The recorded tensors are the projections' outputs
    themselves: under autograd they carry the graph back to the model's parameters.

    A fused projection (ModernBERT's Wqkv) is hooked once and its output cut into the three. A model
    that unpads its inputs (ModernBERT with flash attention in transformers 5.0) projects the
    non-padding tokens only, [T, H]: `pop(attention_mask)` puts them back at their places in
    [B, S, H], zeros at the padding (which the relation loss masks anyway).

    With `stop_forward=True` the forward is interrupted once all three have been recorded and
    the `with` block ends there quietly: use it only where nothing after the projections is
    needed (the teacher), and never around a wrapper that must see its forward finish (a
    DeepSpeed engine).

        capture = QKVCapture(model, layer_index0=5)
        with capture:
            model(input_ids=ids, attention_mask=mask)
        q, k, v = capture.pop()        # each [B, S, H]
        capture.remove()
    """

    def __init__(self, model: nn.Module, layer_index0: int, *, stop_forward: bool = False,
                 adapter: EncoderAdapter | None = None):
        adapter = adapter or get_adapter(model)
        self.layer_index0 = layer_index0
        self.stop_forward = stop_forward
        self._outputs: list[torch.Tensor | None] = [None, None, None]
        self._recording = False
        linears = adapter.qkv(model, layer_index0)
        if adapter.fused_qkv:
            self._handles = [linears[0].register_forward_hook(self._fused_hook(adapter))]
        else:
            self._handles = [linear.register_forward_hook(self._hook(slot)) for slot, linear in enumerate(linears)]

    def _hook(self, slot: int):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if not self._recording or self._outputs[slot] is not None:
                return  # the first call is the layer's own: DeBERTa also projects its relative embeddings
            self._outputs[slot] = output
            if self.stop_forward and all(o is not None for o in self._outputs):
                raise _StopForward
        return hook

    def _fused_hook(self, adapter: EncoderAdapter):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if not self._recording or self._outputs[0] is not None:
                return
            self._outputs = list(adapter.split_qkv(output))
            if self.stop_forward:
                raise _StopForward
        return hook

    def __enter__(self) -> "QKVCapture":
        self._outputs = [None, None, None]
        self._recording = True
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._recording = False
        return exc_type is _StopForward

    def pop(self, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The recorded (q, k, v), each [B, S, H]; the capture keeps no reference afterwards.

        Outputs of an unpadded forward ([T, H], T = attention_mask.sum()) are scattered back to
        [B, S, H] by `attention_mask` [B, S], which is then required.
        """
        outputs, self._outputs = self._outputs, [None, None, None]
        if any(o is None for o in outputs):
            missing = [n for n, o in zip("qkv", outputs, strict=True) if o is None]
            raise RuntimeError(f"no {'/'.join(missing)} projection output was recorded for layer "
                               f"{self.layer_index0 + 1}: run the model inside `with capture:` first")
        if outputs[0].dim() == 2:
            return tuple(repad(o, attention_mask) for o in outputs)  # type: ignore[return-value]
        return outputs[0], outputs[1], outputs[2]

    def remove(self) -> None:
        """Remove the hooks; the capture records nothing afterwards."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._outputs = [None, None, None]


def repad(unpadded: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[T, H] rows of the non-padding tokens (row-major order of `attention_mask` [B, S]) -> [B, S, H],
    zeros at the padding; differentiable."""
    if attention_mask is None:
        raise RuntimeError("the model ran unpadded (its projections came out [tokens, H]): pass the batch's "
                           "attention_mask to pop() to put them back in [B, S, H]")
    flat = attention_mask.reshape(-1).to(unpadded.device) != 0
    if int(flat.sum()) != unpadded.shape[0]:
        raise RuntimeError(f"an unpadded projection has {unpadded.shape[0]} rows but the attention mask "
                           f"{tuple(attention_mask.shape)} has {int(flat.sum())} tokens")
    indices = flat.nonzero().squeeze(1)
    out = unpadded.new_zeros(flat.numel(), unpadded.shape[-1]).index_put((indices,), unpadded)
    return out.view(*attention_mask.shape, unpadded.shape[-1])


_DTYPES = {
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
}


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """The teacher's dtype: float16 on CUDA and float32 elsewhere for None or "auto", else as named."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif isinstance(dtype, str) and dtype.lower() in _DTYPES:
        resolved = _DTYPES[dtype.lower()]
    else:
        resolved = None
    if resolved not in (torch.float16, torch.bfloat16, torch.float32):
        raise ConfigError(f"teacher dtype {dtype!r} is not supported: choose auto, float16, bfloat16 or float32")
    return resolved


def _default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


class FrozenTeacher:
    """A frozen encoder truncated at `teacher_layer`, returning that layer's Q/K/V.

    Args:
        model_or_name_or_path: a hub name or local directory (loaded with `AutoModel`), or a
            model object (base or head model), which is modified in place: its head is left
            behind, its layers above `teacher_layer` are dropped, it is frozen, cast and moved.
        teacher_layer: 1-based layer whose Q/K/V are distilled (12 = the last layer of BERT-base).
        dtype: torch dtype or "float16"/"bfloat16"/"float32"/"auto"; None or "auto" means
            float16 on CUDA and float32 on CPU.
        device: where the teacher runs; None means the current CUDA device if there is one, else CPU.
        attn_implementation: "eager", "sdpa", ...; None keeps the model's (or transformers') default.
        run_to_end: keep every layer and run the whole forward (Q/K/V are captured on the way), for a
            loss on the teacher's last hidden state (the embedding loss); default: stop at the projections.

    Attributes: `model` (the truncated base encoder), `config` (its config, layer count updated),
    `teacher_layer`, `num_layers` (layers that run: `teacher_layer`, or all with `run_to_end`),
    `run_to_end`, `hidden_size`, `adapter`, `device`, `dtype`.
    """

    def __init__(self, model_or_name_or_path: nn.Module | str | os.PathLike, teacher_layer: int, *,
                 dtype: torch.dtype | str | None = None, device: torch.device | str | None = None,
                 attn_implementation: str | None = None, run_to_end: bool = False):
        self.device = torch.device(device) if device is not None else _default_device()
        self.dtype = resolve_dtype(dtype, self.device)
        if isinstance(model_or_name_or_path, (str, os.PathLike)):
            from transformers import AutoConfig, AutoModel

            from .encoders import check_supported

            source = resolve_model_source(model_or_name_or_path, "teacher")
            kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
            try:
                check_supported(AutoConfig.from_pretrained(source), "teacher")  # before the weights are read
                # loaded on CPU in the target dtype; the dropped layers never reach the device
                model = AutoModel.from_pretrained(source, dtype=self.dtype, **kwargs)
            except OSError as e:  # a hub name not found or not reachable, a directory without the weights
                raise model_load_error("teacher", source, e) from e
        elif isinstance(model_or_name_or_path, nn.Module):
            model = model_or_name_or_path
            if attn_implementation:
                model.set_attn_implementation(attn_implementation)
        else:
            raise ConfigTypeError(f"FrozenTeacher needs a model, a hub name or a directory, "
                                  f"not {type(model_or_name_or_path).__name__}")

        self.adapter = get_adapter(model)
        model = self.adapter.base_model(model)
        depth = self.adapter.num_layers(model.config)
        if isinstance(teacher_layer, bool) or not isinstance(teacher_layer, int) or not 1 <= teacher_layer <= depth:
            raise ConfigError(f"teacher_layer={teacher_layer!r} is out of range: the teacher "
                              f"({type(model).__name__}) has {depth} layers; choose 1..{depth} (1-based)")
        if teacher_layer < depth and not run_to_end:
            self.adapter.truncate_layers(model, teacher_layer)
        model.requires_grad_(False)
        model.eval()
        self.model = model.to(device=self.device, dtype=self.dtype)
        self.config = model.config
        self.teacher_layer = teacher_layer
        self.run_to_end = bool(run_to_end)
        self.num_layers = depth if run_to_end else teacher_layer
        self.hidden_size = self.adapter.hidden_size(self.config)
        self._capture = QKVCapture(model, teacher_layer - 1, stop_forward=not run_to_end, adapter=self.adapter)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> "FrozenTeacher":
        """Move and cast the teacher in place (dtype as in the constructor: None or "auto" per device); returns it.

        The training run loads the teacher in float32 on the CPU, creates the student from those weights
        (so the student inherits float32 weights, not a float16 rounding of them), then calls this.
        """
        self.device = torch.device(device) if device is not None else _default_device()
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = self.model.to(device=self.device, dtype=self.dtype)
        return self

    @torch.no_grad()  # not inference_mode: the outputs are saved by the loss's autograd functions
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None, *, return_hidden: bool = False):
        """(q, k, v) of `teacher_layer`, each [B, S, H] in the teacher's dtype, without autograd graph.

        With `return_hidden=True` (a teacher built with `run_to_end=True`): ((q, k, v), the last hidden
        state [B, S, H]), what a pooled sentence embedding is computed from.
        """
        if return_hidden and not self.run_to_end:
            raise ConfigError("return_hidden needs the whole forward: build the teacher with run_to_end=True")
        inputs = {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}
        if token_type_ids is not None and self.adapter.takes_token_type_ids:
            inputs["token_type_ids"] = token_type_ids.to(self.device)
        with self._capture:
            outputs = self.model(**inputs, output_hidden_states=False, output_attentions=False)
        qkv = self._capture.pop(inputs["attention_mask"])
        return (qkv, outputs.last_hidden_state) if return_hidden else qkv

    def __repr__(self) -> str:
        return (f"FrozenTeacher({type(self.model).__name__}, teacher_layer={self.teacher_layer}, "
                f"hidden_size={self.hidden_size}, dtype={self.dtype}, device={self.device})")
