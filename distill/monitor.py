"""Run monitoring: a scalar-logger interface (TensorBoard or nothing), the logging window's
accumulator (`StepMetrics`) and FLOP accounting (`step_flops`, shared with tools/bench/distill_bench.py;
`peak_flops`, a GPU's peak by its exact name, None for a GPU not in the table: MFU is then not logged and
`mfu_unknown_line` says so once, never a guess).
"""
from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Callable, Mapping, Protocol

import torch

from .encoders import get_adapter
from .errors import ConfigError


class ScalarLogger(Protocol):
    def log(self, step: int, scalars: Mapping[str, float]) -> None: ...
    def log_text(self, tag: str, text: str, step: int = 0) -> None: ...
    def close(self) -> None: ...


class NullLogger:
    """What ranks other than 0 use: logs nothing."""

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        pass

    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger:
    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        """One text entry (TensorBoard's Text tab), e.g. the relation kernel's self-check."""
        self.writer.add_text(tag, text, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# --------------------------------------------------------------------------- FLOPs
def encoder_forward_flops(num_layers: int, hidden: int, intermediate: int, batch: int, seq: int,
                          mlp_matrices: int = 2) -> float:
    """Matmul FLOPs (2 per multiply-add) of `num_layers` transformer encoder layers, forward.

    Per layer and token: Q, K, V and output projections 4*H*H, feed-forward `mlp_matrices`*H*I
    (2; 3 for a gated MLP such as ModernBERT's), attention scores and context 2*S*H (counted in
    full for local-attention layers too); embeddings and element-wise work are negligible.
    """
    per_token = 2 * (4 * hidden * hidden + mlp_matrices * hidden * intermediate + 2 * seq * hidden)
    return float(num_layers * per_token * batch * seq)


def relation_flops(num_relations: int, teacher_hidden: int, student_hidden: int, batch: int, seq: int) -> float:
    """The relation loss: teacher logits, student logits forward; student logits and two grads backward."""
    return float(num_relations * 2 * batch * seq * seq * (teacher_hidden + 4 * student_hidden))


def step_flops(teacher_config, student_config, teacher_layers: int, num_relations: int, batch: int,
               seq: int, *, run_to_end: bool = False) -> float:
    """Matmul FLOPs of one micro-batch of [batch, seq] windows in a training step.

    The teacher forward (distill.teacher.FrozenTeacher): its layers below `teacher_layers` whole and layer
    `teacher_layers` only up to its Q/K/V projections, where the forward stops; with `run_to_end` (the
    embedding loss: the teacher runs all its layers, `teacher_layers` being their number) every layer whole.
    Then the student forward and backward (3 x its forward) and the relation loss; the configs are the two
    models' Hugging Face configs.
    """
    ta, sa = get_adapter(teacher_config), get_adapter(student_config)
    t_hidden, s_hidden = ta.hidden_size(teacher_config), sa.hidden_size(student_config)
    whole = teacher_layers if run_to_end else teacher_layers - 1
    teacher = encoder_forward_flops(whole, t_hidden, ta.intermediate_size(teacher_config), batch, seq, ta.mlp_matrices)
    if not run_to_end:
        teacher += 2.0 * 3 * t_hidden * t_hidden * batch * seq  # the last layer's Q, K and V projections
    return (teacher
            + 3 * encoder_forward_flops(sa.num_layers(student_config), s_hidden, sa.intermediate_size(student_config),
                                        batch, seq, sa.mlp_matrices)
            + relation_flops(num_relations, t_hidden, s_hidden, batch, seq))


# Dense bf16/fp16 tensor-core peaks (TFLOP/s, fp32 accumulation, no sparsity) by the whole name that
# torch.cuda.get_device_name gives (spaces normalised), from NVIDIA's data sheets and architecture white
# papers. A name matched by none has no peak: MFU is then not logged (set DISTILL_PEAK_TFLOPS), never guessed.
PEAK_TFLOPS = tuple((re.compile(pattern), tflops) for pattern, tflops in (
    (r"NVIDIA H100 80GB HBM3", 989.4),              # H100 SXM5
    (r"NVIDIA H100 PCIe", 756.5),
    (r"NVIDIA H100 NVL", 835.5),
    (r"NVIDIA H200", 989.4),                        # H200 SXM
    (r"NVIDIA H200 NVL", 835.5),
    (r"NVIDIA A100(-SXM4?|-PCIE)?-(40|80)GB", 312.0),  # NVIDIA A100-SXM4-80GB, NVIDIA A100-PCIE-40GB
    (r"NVIDIA A100 (40|80)GB PCIe", 312.0),
    (r"NVIDIA L40S", 362.05),
    (r"NVIDIA L40", 181.05),
    (r"NVIDIA L4", 121.0),
    (r"NVIDIA RTX A6000", 154.8),
    (r"NVIDIA A40", 149.7),
    (r"NVIDIA A10", 125.0),
    (r"NVIDIA GeForce RTX 4090", 165.2),            # 330.3 with fp16 accumulation
    (r"NVIDIA GeForce RTX 3090", 71.0),             # 142 with fp16 accumulation
    (r"Tesla V100-SXM2-(16|32)GB", 125.0),
    (r"Tesla V100-PCIE-(16|32)GB", 112.0),
    (r"Tesla V100S-PCIE-32GB", 130.0),
    (r"Tesla T4", 65.0),
))
PEAK_ENV = "DISTILL_PEAK_TFLOPS"


def _device_name(device: torch.device) -> str:
    return " ".join(torch.cuda.get_device_name(device).split())


def peak_flops(device: torch.device) -> float | None:
    """The GPU's dense half-precision peak in FLOP/s: $DISTILL_PEAK_TFLOPS where set, else the table's entry for
    the device's exact name (PEAK_TFLOPS); None off CUDA or for a GPU the table does not know."""
    if device.type != "cuda":
        return None
    override = os.environ.get(PEAK_ENV, "").strip()
    if override:
        try:
            tflops = float(override)
        except ValueError:
            tflops = math.nan
        if not (math.isfinite(tflops) and tflops > 0):
            raise ConfigError(f"{PEAK_ENV}={override!r} is not a positive number of TFLOP/s: give the GPU's dense "
                             f"bf16/fp16 tensor peak (e.g. 989.4 for an H100 SXM), or unset it")
        return tflops * 1e12
    name = _device_name(device)
    for pattern, tflops in PEAK_TFLOPS:
        if pattern.fullmatch(name):
            return tflops * 1e12
    return None


def mfu_unknown_line(device: torch.device) -> str | None:
    """The one line for the run's log when MFU cannot be logged on this CUDA device; None when it can (or off CUDA)."""
    if device.type != "cuda" or peak_flops(device) is not None:
        return None
    return (f"MFU not logged: the peak FLOPs of {_device_name(device)!r} are unknown; set {PEAK_ENV} to its dense "
            f"bf16/fp16 tensor TFLOP/s to log it")


# --------------------------------------------------------------------------- the logging window
class StepMetrics:
    """Sums over one logging window (several optimizer steps), kept on device so a step never waits on .item().

    `add` once per micro-batch; `flush` once per window returns the TensorBoard scalars (mean
    losses, learning rate, gradient norm, throughput, peak memory, MFU) and starts a new window.
    `flops(batch, seq)` gives a micro-batch's FLOPs (see `step_flops`); MFU needs it and `peak`.
    """

    def __init__(self, device: torch.device, *, world: int, precision: str, peak: float | None = None,
                 flops: Callable[[int, int], float] | None = None):
        self.device, self.world, self.precision, self.peak, self.flops = device, world, precision, peak, flops
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.parts: dict[str, torch.Tensor] = {}
        self.micro = 0  # finite micro-batches
        self.skipped = 0  # non-finite micro-batches
        self.shapes: list[tuple[int, int]] = []  # (batch, seq) of every micro-batch run
        self.t0 = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def add(self, loss: torch.Tensor, parts: Mapping[str, torch.Tensor], shape, finite: bool = True) -> None:
        self.shapes.append((shape[0], shape[1]))
        if not finite:  # skipped micro-batches cost time but are left out of the mean loss
            self.skipped += 1
            return
        self.loss += loss.float()
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0) + v.detach().float()
        self.micro += 1

    def flush(self, engine) -> dict[str, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - self.t0
        steps = max(self.micro, 1)
        scalars = {"loss/total": self.loss.item() / steps}
        scalars.update({f"loss/{k}": v.item() / steps for k, v in self.parts.items()})
        if self.skipped:
            scalars["train/skipped_nonfinite"] = float(self.skipped)
        scalars.update(self._engine_scalars(engine))
        optimizer_steps = self.micro / max(engine.gradient_accumulation_steps(), 1)
        scalars["throughput/samples_per_s"] = self.world * sum(b for b, _ in self.shapes) / seconds
        scalars["throughput/tokens_per_s"] = self.world * sum(b * s for b, s in self.shapes) / seconds
        scalars["time/seconds_per_step"] = seconds / max(optimizer_steps, 1e-9)
        if self.device.type == "cuda":
            scalars["memory/peak_allocated_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            if self.peak and self.flops is not None:
                scalars["throughput/mfu"] = sum(self.flops(b, s) for b, s in self.shapes) / seconds / self.peak
        self.reset()
        return scalars

    def _engine_scalars(self, engine) -> dict[str, float]:
        """Learning rate, gradient norm and (fp16) loss scale, from the DeepSpeed engine."""
        scalars = {"train/learning_rate": float(engine.get_lr()[0])}
        grad_norm = engine.get_global_grad_norm()
        if grad_norm is not None:
            scalars["train/grad_norm"] = float(grad_norm)
        if self.precision == "fp16":
            scale = loss_scale_of(engine)
            if scale is not None:
                scalars["train/loss_scale"] = scale
        return scalars


def loss_scale_of(engine) -> float | None:
    """The current fp16 loss scale of a DeepSpeed engine's optimizer, or None where it has none.

    DeepSpeed keeps it in several places by version and optimizer: `cur_scale` and `loss_scale`
    (ZeRO 1-3), `loss_scale` (FP16_Optimizer, FP16_UnfusedOptimizer), `loss_scale_config.cur_scale`
    (FP16_Optimizer in 0.19) and `loss_scaler.cur_scale`. `engine.loss_scale()` is the configured static
    scale (0 for dynamic), not the current one, so it is never read.
    """
    optimizer = getattr(engine, "optimizer", None)
    places = ((optimizer, "cur_scale"), (optimizer, "loss_scale"),
              (getattr(optimizer, "loss_scale_config", None), "cur_scale"),
              (getattr(optimizer, "loss_scaler", None), "cur_scale"))
    for holder, name in places:
        value = getattr(holder, name, None)
        if (isinstance(value, (int, float)) and not isinstance(value, bool)) or torch.is_tensor(value):
            return float(value)
    return None
