"""Run monitoring: a small scalar-logger interface (TensorBoard or nothing) and FLOP accounting."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Protocol

import torch


class ScalarLogger(Protocol):
    def log(self, step: int, scalars: Mapping[str, float]) -> None: ...
    def close(self) -> None: ...


class NullLogger:
    """What ranks other than 0 use: logs nothing."""

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
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

    def close(self) -> None:
        self.writer.close()


# --------------------------------------------------------------------------- FLOPs
def encoder_forward_flops(num_layers: int, hidden: int, intermediate: int, batch: int, seq: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of `num_layers` transformer encoder layers, forward.

    Per layer and token: Q, K, V and output projections 4*H*H, feed-forward 2*H*I, attention
    scores and context 2*S*H; embeddings and element-wise work are negligible.
    """
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * intermediate + 2 * seq * hidden)
    return float(num_layers * per_token * batch * seq)


def relation_flops(num_relations: int, teacher_hidden: int, student_hidden: int, batch: int, seq: int) -> float:
    """The relation loss: teacher logits, student logits forward; student logits and two grads backward."""
    return float(num_relations * 2 * batch * seq * seq * (teacher_hidden + 4 * student_hidden))


# Dense bf16/fp16 tensor-core peaks (FLOP/s) of common training GPUs, by name fragment.
PEAK_FLOPS = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 756e12,
    "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L40": 181e12, "A6000": 155e12, "A40": 150e12,
    "A10G": 70e12, "A10": 125e12, "L4": 121e12, "V100": 125e12, "T4": 65e12, "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def peak_flops(device: torch.device) -> float | None:
    """The GPU's dense half-precision peak, or None when unknown (MFU is then not logged)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, flops in PEAK_FLOPS.items():
        if fragment in name:
            return flops
    return None
