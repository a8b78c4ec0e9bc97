"""The one call from models to loss: teacher Q/K/V, student Q/K/V, relation loss.

    objective = MiniLMv2Objective(teacher, student, num_relation_heads=48,
                                  relations={(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0})
    loss, parts = objective(batch, student_forward=engine)   # parts: {"qq": ..., "kk": ..., "vv": ...}

The student's Q/K/V are captured by forward hooks on its module, so the forward may go through
any wrapper of that same module (a DeepSpeed engine): the hooks fire all the same.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch import nn

from .encoders import get_adapter
from .relations import relation_loss
from .teacher import FrozenTeacher, QKVCapture

__all__ = ["MiniLMv2Objective"]


class MiniLMv2Objective:
    """MiniLMv2 self-attention relation loss between a frozen teacher and a student.

    Args:
        teacher: the frozen teacher; its `teacher_layer` gives the teacher side.
        student: the student module (the one a DeepSpeed engine wraps, not the engine).
        num_relation_heads: relation heads A_r; must divide the teacher's and the student's widths.
        relations: {(m, n): weight} with 1 = query, 2 = key, 3 = value, e.g. {(1, 1): 1.0}.
        chunk_size: query rows per chunk of the relation loss; None computes it in one piece.
        relation_impl: "auto" (the fused Triton kernels on CUDA when triton is installed, else
            chunked), "chunked" (chunk_size rows at a time; None: one piece), "reference" (one piece, S x S
            matrices under autograd) or "triton" (distill.kernels; refused where it cannot run).
        student_layer: 1-based student layer whose Q/K/V are distilled; default its last.
        device: where the student will train (decides relation_impl="auto"); default where its
            parameters are now (a DeepSpeed engine moves a CPU-built student to the GPU later).

    Call `remove()` to take the hooks off the student when the objective is no longer used.
    """

    def __init__(self, teacher: FrozenTeacher, student: nn.Module, *, num_relation_heads: int,
                 relations: Mapping[tuple[int, int], float], chunk_size: int | None = None,
                 student_layer: int | None = None, relation_impl: str = "chunked",
                 device: torch.device | str | None = None):
        if not isinstance(teacher, FrozenTeacher):
            raise TypeError(f"teacher must be a FrozenTeacher (wrap the model: FrozenTeacher(model, teacher_layer)), "
                            f"not {type(teacher).__name__}")
        adapter = get_adapter(student)
        depth = adapter.num_layers(student.config)
        student_layer = depth if student_layer is None else student_layer
        if isinstance(student_layer, bool) or not isinstance(student_layer, int) or not 1 <= student_layer <= depth:
            raise ValueError(f"student_layer={student_layer!r} is out of range: the student has {depth} layers; "
                             f"choose 1..{depth} (1-based)")

        t_vocab, s_vocab = teacher.config.vocab_size, student.config.vocab_size
        if t_vocab != s_vocab:
            raise ValueError(f"the teacher's vocabulary has {t_vocab} ids and the student's {s_vocab}: both must read "
                             f"the same token ids; create the student from the teacher (create_student)")

        t_width, s_width = teacher.hidden_size, adapter.hidden_size(student.config)
        if (isinstance(num_relation_heads, bool) or not isinstance(num_relation_heads, int) or num_relation_heads < 1
                or t_width % num_relation_heads or s_width % num_relation_heads):
            common = math.gcd(t_width, s_width)
            valid = ", ".join(str(d) for d in range(1, common + 1) if common % d == 0)
            raise ValueError(f"num_relation_heads={num_relation_heads!r} must divide both the teacher's width "
                             f"({t_width}) and the student's width ({s_width}); choose among {valid}")

        relations = dict(relations)
        bad = [key for key in relations if not (isinstance(key, tuple) and len(key) == 2
                                                and all(isinstance(i, int) and 1 <= i <= 3 for i in key))]
        if not relations or bad:
            raise ValueError(f"relations={relations!r}: give {{(m, n): weight}} with m, n in 1..3 "
                             f"(1 = query, 2 = key, 3 = value), e.g. {{(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}}")
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size={chunk_size!r} must be a positive number of query rows, or None")

        device = torch.device(device) if device is not None else _module_device(student)
        self.relation_impl = resolve_relation_impl(relation_impl, device)
        if self.relation_impl == "reference":
            chunk_size = None

        self.teacher = teacher
        self.student = student
        self.student_layer = student_layer
        self.num_relation_heads = num_relation_heads
        self.relations = relations
        self.chunk_size = chunk_size
        self._student_adapter = adapter
        self._capture = QKVCapture(student, student_layer - 1, adapter=adapter)

    def __call__(self, batch: Mapping[str, torch.Tensor],
                 student_forward: Callable[..., object] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, float32 scalar with graph to the student; {"qq": loss, ...} per relation).

        `batch` holds input_ids and attention_mask [B, S] (token_type_ids optional), already on
        the student's device. `student_forward` runs the student (default: the student module).
        """
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        token_type_ids = batch.get("token_type_ids")
        teacher_qkv = self.teacher(input_ids, attention_mask, token_type_ids)

        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._student_adapter.takes_token_type_ids:
            inputs["token_type_ids"] = token_type_ids
        forward = student_forward if student_forward is not None else self.student
        with self._capture:
            outputs = forward(**inputs, output_hidden_states=False, output_attentions=False)
        student_qkv = self._capture.pop()

        loss_fn = relation_loss
        if self.relation_impl == "triton":
            from .kernels import relation_loss_triton as loss_fn
        loss, parts = loss_fn(teacher_qkv, student_qkv, attention_mask, num_relation_heads=self.num_relation_heads,
                              relations=self.relations, chunk_size=self.chunk_size)
        if _zero3_partitioned(self.student) and (links := _grad_tensors(outputs)):
            # ZeRO-3 gathers and releases parameters in autograd hooks on every module's outputs and
            # inputs; a module whose input gets a gradient while its output never reaches the loss
            # (the captured layer, the encoder, the model itself) breaks its bookkeeping. A link worth
            # exactly 0 puts the outputs on the graph; elsewhere it is skipped, as it costs the
            # backward of the blocks above the projections.
            loss = loss + _ZeroLink.apply(*links)
        return loss, parts

    def remove(self) -> None:
        """Take the capture hooks off the student."""
        self._capture.remove()


RELATION_IMPLS = ("auto", "chunked", "reference", "triton")


def resolve_relation_impl(impl: str, device: torch.device) -> str:
    """The relation-loss implementation to use on `device`: auto -> triton on CUDA when it can run, else chunked."""
    from . import kernels

    if impl not in RELATION_IMPLS:
        raise ValueError(f"relation_impl={impl!r}: choose one of {', '.join(RELATION_IMPLS)}")
    if impl == "auto":
        return "triton" if device.type == "cuda" and kernels.available(device) else "chunked"
    if impl == "triton" and (reason := kernels.unavailable_reason(device)) is not None:
        raise ValueError(f"relation_impl=triton cannot run here: {reason}; use relation_impl=chunked (or auto)")
    return impl


def _module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _zero3_partitioned(module: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 has partitioned the module's parameters (it tags each with a ds_id)."""
    return hasattr(next(module.parameters()), "ds_id")


def _grad_tensors(outputs) -> list[torch.Tensor]:
    """The tensors with autograd history in a model output (a ModelOutput, tuple or tensor)."""
    values = outputs.values() if isinstance(outputs, Mapping) else outputs if isinstance(outputs, (tuple, list)) else [outputs]
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
