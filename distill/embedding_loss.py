"""The optional embedding loss: the student's pooled sentence vector against the teacher's.

MiniLMv2 distils self-attention relations only; a user who wants the student to reproduce the
teacher's sentence embeddings adds, with `--embedding_loss mse|cosine`, a term on the pooled
last hidden states of both models:

    e_t = pool(teacher last hidden state)                 [B, H_t]   (the teacher's pooling mode)
    e_s = P(pool(student last hidden state))              [B, H_t]   (P: a learned linear H_s -> H_t
                                                                       where the widths differ, else identity)
    mse:    mean over the batch of ||e_s - e_t||^2 / H_t  (torch's mse_loss: the mean over all B x H_t entries)
    cosine: mean over the batch of 1 - cos(e_s, e_t)
    total = relation losses + embedding_loss_weight * that

Pooling follows sentence-transformers' `Pooling` module: "mean" averages the real tokens (the
attention mask), "cls" takes the first token, "max" the per-dimension maximum over real tokens.
The functions here are pure tensor functions; `EmbeddingProjection` is the learned P, which
trains with the student (it is registered on the student module, so the DeepSpeed engine, its
optimizer and its checkpoints hold it) and is exported as a sentence-transformers Dense module or
dropped (`--embedding_projection`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import EMBEDDING_LOSSES, POOLING_MODES  # noqa: F401 (re-exported)
from .errors import ConfigError

__all__ = ["POOLING_MODES", "EMBEDDING_LOSSES", "PROJECTION_ATTRIBUTE", "pool", "embedding_loss",
           "EmbeddingProjection", "EmbeddingSpec"]

PROJECTION_ATTRIBUTE = "distill_embedding_projection"
"""The student attribute that holds the projection during training (its weights: `distill_embedding_projection.*`)."""


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sentence vectors [B, H] from token states [B, S, H] and the mask [B, S] (1 at real tokens).

    An all-padding row gives zeros for "mean" and "max" (never NaN).
    """
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(device=hidden.device, dtype=torch.bool).unsqueeze(-1)   # [B, S, 1]
    if mode == "mean":
        summed = (hidden * mask.to(hidden.dtype)).sum(dim=1)
        count = mask.sum(dim=1).clamp(min=1).to(hidden.dtype)
        return summed / count
    if mode == "max":
        filled = hidden.masked_fill(~mask, torch.finfo(hidden.dtype).min)
        return torch.where(mask.any(dim=1), filled.max(dim=1).values, torch.zeros_like(hidden[:, 0]))
    raise ConfigError(f"pooling mode {mode!r} is unknown: choose one of {', '.join(POOLING_MODES)}")


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """The loss between sentence vectors [B, H] (same width), a float32 scalar; the teacher is a constant."""
    if student.shape != teacher.shape:
        raise ConfigError(f"student vectors {tuple(student.shape)} and teacher vectors {tuple(teacher.shape)} differ: "
                          f"project the student's to the teacher's width first")
    s, t = student.float(), teacher.detach().float()
    if kind == "mse":
        return F.mse_loss(s, t)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()
    raise ConfigError(f"embedding loss {kind!r} is unknown: choose mse or cosine (or none)")


class EmbeddingProjection(nn.Linear):
    """The learned linear map from the student's width to the teacher's (no bias, like the sentence-transformers
    Dense module it is exported as), initialised so that at the start it copies the student's leading
    coordinates into the teacher's (the student itself starts from the teacher's leading slices), zeros
    elsewhere."""

    def __init__(self, student_width: int, teacher_width: int):
        super().__init__(student_width, teacher_width, bias=False)
        with torch.no_grad():
            self.weight.zero_()
            n = min(student_width, teacher_width)
            self.weight[:n, :n] = torch.eye(n)


class EmbeddingSpec:
    """The embedding-loss settings of a run: loss kind ("mse" or "cosine"), its weight, the pooling mode."""

    __slots__ = ("loss", "weight", "pooling")

    def __init__(self, loss: str, weight: float, pooling: str):
        if loss not in EMBEDDING_LOSSES[1:]:
            raise ConfigError(f"embedding loss {loss!r} is unknown: choose mse or cosine")
        if not (isinstance(weight, (int, float)) and weight > 0 and weight < float("inf")):
            raise ConfigError(f"embedding loss weight {weight!r} must be a finite number > 0")
        if pooling not in POOLING_MODES:
            raise ConfigError(f"pooling {pooling!r} is unknown: choose one of {', '.join(POOLING_MODES)}")
        self.loss, self.weight, self.pooling = loss, float(weight), pooling

    def __repr__(self) -> str:
        return f"EmbeddingSpec(loss={self.loss!r}, weight={self.weight}, pooling={self.pooling!r})"
