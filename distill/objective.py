"""The one call from models to loss: teacher Q/K/V, student Q/K/V, relation loss.

    objective = MiniLMv2Objective(teacher, student, num_relation_heads=48,
                                  relations={(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0})
    loss, parts = objective(batch, student_forward=engine)   # parts: {"qq": ..., "kk": ..., "vv": ...}

The student's Q/K/V are captured by forward hooks on its module, so the forward may go through
any wrapper of that same module (a DeepSpeed engine): the hooks fire all the same.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from . import kernel_check
from .embedding_loss import PROJECTION_ATTRIBUTE, EmbeddingSpec, embedding_loss, pool
from .encoders import get_adapter
from .errors import ConfigError, ConfigTypeError
from .relations import RelationSpec, relation_loss
from .teacher import FrozenTeacher, QKVCapture

__all__ = ["MiniLMv2Objective"]


class MiniLMv2Objective:
    """MiniLMv2 self-attention relation loss between a frozen teacher and a student.

    Args:
        teacher: the frozen teacher; its `teacher_layer` gives the teacher side.
        student: the student module (the one a DeepSpeed engine wraps, not the engine).
        spec: the relation settings as one `RelationSpec` (as `DistillConfig.relation_spec` builds
            them); or, instead, these four keyword arguments, from which one is built:
        num_relation_heads: relation heads A_r; must divide the teacher's and the student's widths.
        relations: {(m, n): weight} with 1 = query, 2 = key, 3 = value, e.g. {(1, 1): 1.0}, or the same
            as the command line writes it, e.g. "qq:1,kk:1,vv:1" (see `parse_relations`).
        chunk_size: query rows per chunk of the relation loss; None computes it in one piece.
        relation_impl: "auto" (the fused Triton kernels on CUDA when triton is installed, else
            chunked), "chunked" (default), "reference" or "triton"; see `RelationSpec`.
        student_layer_index: 1-based student layer whose Q/K/V are distilled; default its last.
        device: where the student will train (decides relation_impl="auto"); default where its
            parameters are now (a DeepSpeed engine moves a CPU-built student to the GPU later).
        student_dtype: the dtype of the student's Q/K/V in training (torch.bfloat16 for a bf16
            engine); default its parameters' dtype now. Shapes the kernel self-check's inputs.
        embedding: the optional embedding loss (`distill.embedding_loss.EmbeddingSpec`): the pooled
            last hidden states of both models (the teacher built with run_to_end=True; the student's
            projected by its `EmbeddingProjection` where the widths differ), added with its weight;
            its value is parts["embedding"].

    `spec` afterwards holds the settings with the implementation settled for the device. When that
    is the fused Triton kernel, it has first been checked against the chunked loss on `device`
    (`distill.kernel_check.settle_relation_spec`): on a failure relation_impl="auto" uses the chunked
    loss and "triton" raises ValueError. `kernel_check` holds that check's result
    (`distill.kernel_check.SelfCheckResult`; its `line()` for a log), or None when no check was meant
    (chunked/reference, or auto off CUDA); with relation_impl auto on CUDA where the kernel cannot run, a
    result with `ran=False` whose `line()` says why.
    Call `remove()` to take the hooks off the student when the objective is no longer used.
    """

    def __init__(self, teacher: FrozenTeacher, student: nn.Module, spec: RelationSpec | None = None, *,
                 num_relation_heads: int | None = None, relations: Mapping[tuple[int, int], float] | str | None = None,
                 chunk_size: int | None = None, relation_impl: str | None = None,
                 student_layer_index: int | None = None, device: torch.device | str | None = None,
                 student_dtype: torch.dtype | None = None, embedding: EmbeddingSpec | None = None):
        if not isinstance(teacher, FrozenTeacher):
            raise ConfigTypeError(f"teacher must be a FrozenTeacher (wrap the model: FrozenTeacher(model, "
                                  f"teacher_layer)), not {type(teacher).__name__}")
        adapter = get_adapter(student)
        depth = adapter.num_layers(student.config)
        index = depth if student_layer_index is None else student_layer_index
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= depth:
            raise ConfigError(f"student_layer_index={index!r} is out of range: the student has {depth} layers; "
                              f"choose 1..{depth} (1-based)")
        t_vocab, s_vocab = teacher.config.vocab_size, student.config.vocab_size
        if t_vocab != s_vocab:
            raise ConfigError(f"the teacher's vocabulary has {t_vocab} ids and the student's {s_vocab}: both must read "
                              f"the same token ids; create the student from the teacher (create_student)")
        spec = RelationSpec.from_settings(spec, num_relation_heads=num_relation_heads, relations=relations,
                                          impl=relation_impl, chunk_size=chunk_size)
        spec.check_widths({"the teacher's width": teacher.hidden_size,
                           "the student's width": adapter.hidden_size(student.config)})
        device = torch.device(device) if device is not None else _module_device(student)
        student_dtype = student_dtype or next(student.parameters()).dtype

        self.teacher = teacher
        self.student = student
        self.student_layer_index = index
        self.spec, self.kernel_check = kernel_check.settle_relation_spec(
            spec, device, widths=(teacher.hidden_size, adapter.hidden_size(student.config)), dtype=student_dtype,
            teacher_dtype=teacher.dtype)
        self._student_adapter = adapter
        self._capture = QKVCapture(student, index - 1, adapter=adapter)
        self.embedding = embedding
        if embedding is not None:
            if not teacher.run_to_end:
                raise ConfigError("the embedding loss needs the teacher's last hidden state: build the teacher with "
                                  "FrozenTeacher(..., run_to_end=True)")
            if index != depth:
                raise ConfigError("the embedding loss pools the student's last layer: distil its last layer "
                                  "(student_layer_index = its depth)")
            projection = getattr(student, PROJECTION_ATTRIBUTE, None)
            s_width = adapter.hidden_size(student.config)
            if s_width != teacher.hidden_size and projection is None:
                raise ConfigError(f"the student's width {s_width} differs from the teacher's {teacher.hidden_size}: "
                                  f"register an EmbeddingProjection on the student as {PROJECTION_ATTRIBUTE}")

    @property
    def relation_impl(self) -> str:
        """The implementation in use: chunked, reference or triton (never auto)."""
        return self.spec.impl

    @property
    def chunk_size(self) -> int | None:
        return self.spec.chunk_size

    def __call__(self, batch: Mapping[str, torch.Tensor],
                 student_forward: Callable[..., object] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, float32 scalar with graph to the student; {"qq": loss, ...} per relation).

        `batch` holds input_ids and attention_mask [B, S] (token_type_ids optional), already on
        the student's device. `student_forward` runs the student (default: the student module).
        """
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        token_type_ids = batch.get("token_type_ids")
        if self.embedding is not None:
            teacher_qkv, teacher_hidden = self.teacher(input_ids, attention_mask, token_type_ids, return_hidden=True)
        else:
            teacher_qkv = self.teacher(input_ids, attention_mask, token_type_ids)

        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._student_adapter.takes_token_type_ids:
            inputs["token_type_ids"] = token_type_ids
        forward = student_forward if student_forward is not None else self.student
        with self._capture:
            outputs = forward(**inputs, output_hidden_states=False, output_attentions=False)
        student_qkv = self._capture.pop(attention_mask)

        loss, parts = relation_loss(teacher_qkv, student_qkv, attention_mask, self.spec)
        if self.embedding is not None:
            term = self._embedding_term(teacher_hidden, outputs, attention_mask)
            parts["embedding"] = term.detach()
            loss = loss + self.embedding.weight * term
        if _zero3_partitioned(self.student) and (links := _grad_tensors(outputs)):
            # ZeRO-3 gathers and releases parameters in autograd hooks on every module's outputs and
            # inputs; a module whose input gets a gradient while its output never reaches the loss
            # (the captured layer, the encoder, the model itself) breaks its bookkeeping. A link worth
            # exactly 0 puts the outputs on the graph; elsewhere it is skipped, as it costs the
            # backward of the blocks above the projections.
            loss = loss + _ZeroLink.apply(*links)
        return loss, parts

    def _embedding_term(self, teacher_hidden: torch.Tensor, outputs, attention_mask: torch.Tensor) -> torch.Tensor:
        """The embedding loss of the pooled last hidden states (the student's projected to the teacher's width)."""
        mode = self.embedding.pooling
        teacher_vec = pool(teacher_hidden.float(), attention_mask, mode)
        student_vec = pool(outputs.last_hidden_state, attention_mask, mode)
        projection = getattr(self.student, PROJECTION_ATTRIBUTE, None)
        if projection is not None:
            student_vec = projection(student_vec.to(projection.weight.dtype))
        return embedding_loss(student_vec, teacher_vec.to(student_vec.device), self.embedding.loss)

    def remove(self) -> None:
        """Take the capture hooks off the student."""
        self._capture.remove()


def _module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _zero3_partitioned(module: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 has partitioned the module's parameters (it tags each with a ds_id)."""
    return hasattr(next(module.parameters()), "ds_id")


def _grad_tensors(outputs) -> list[torch.Tensor]:
    """The tensors with autograd history in a model output (a ModelOutput, tuple or tensor)."""
    if isinstance(outputs, Mapping):
        values = outputs.values()
    else:
        values = outputs if isinstance(outputs, (tuple, list)) else [outputs]
    return [t for t in values if torch.is_tensor(t) and t.requires_grad]


class _ZeroLink(torch.autograd.Function):
    """A float32 scalar 0 whose backward sends zero gradients to its inputs (no NaN from 0 * inf)."""

    @staticmethod
    def forward(ctx, *tensors: torch.Tensor) -> torch.Tensor:
        ctx.specs = [(t.shape, t.dtype, t.device) for t in tensors]
        return torch.zeros((), dtype=torch.float32, device=tensors[0].device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return tuple(torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.specs)
