"""The training step never waits for the device between micro-batches: one host sync per optimizer step."""
from __future__ import annotations

import itertools

import pytest
import torch

from distill import checkpoint as ckpt
from distill import trainer
from distill.monitor import StepMetrics

SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


class FakeEngine:
    """DeepSpeed's engine as the loop uses it: backward, step (applies at the window's end), module."""

    def __init__(self, module: torch.nn.Module, accumulation: int):
        self.module, self.accumulation, self.micro = module, accumulation, 0

    def __call__(self, x):
        return self.module(x)

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.micro += 1
        if self.micro % self.accumulation == 0:
            with torch.no_grad():
                for p in self.module.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None


def objective_with(losses):
    """An objective whose i-th micro-batch loss is scaled by losses[i] (nan: a non-finite micro-batch)."""
    scales = iter(losses)

    def objective(batch, student_forward):
        loss = student_forward(batch["input_ids"].float()).pow(2).mean() * next(scales)
        return loss, {"qq": loss.detach()}
    return objective


@pytest.fixture
def counted(monkeypatch):
    """Counts every device-to-host read of a tensor (what waits for a GPU)."""
    calls = []
    for name in SYNCS:
        real = getattr(torch.Tensor, name)

        def wrapper(self, *a, _real=real, _name=name, **k):
            calls.append(_name)
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return calls


def window_setup(accumulation: int, losses):
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 2)
    engine = FakeEngine(module, accumulation)
    data = ({"input_ids": torch.randn(3, 4)} for _ in itertools.count())
    metrics = StepMetrics(torch.device("cpu"), world=1, precision="fp32")
    return engine, objective_with(losses), data, metrics


def test_an_optimizer_step_of_four_micro_batches_syncs_once(counted):
    engine, objective, data, metrics = window_setup(4, [1.0] * 8)
    guard = trainer.RunGuard()
    try:
        counted.clear()
        flags = trainer.train_window(engine, objective, data, guard, metrics, 4)
        assert counted == ["tolist"]  # the step's one read: losses' finiteness, stop, weights, together
        counted.clear()
        trainer.train_window(engine, objective, data, guard, metrics, 4)
        assert counted == ["tolist"]
    finally:
        guard.restore()
    assert flags.finite == [True] * 4 and not flags.stop and flags.weights_finite
    assert metrics.micro == 8 and metrics.skipped == 0


def test_the_one_sync_still_finds_a_non_finite_micro_batch_and_diverged_weights(counted):
    engine, objective, data, metrics = window_setup(2, [1.0, float("nan"), 1.0, 1.0])
    guard = trainer.RunGuard()
    try:
        flags = trainer.train_window(engine, objective, data, guard, metrics, 2)
        assert flags.finite == [True, False] and guard.consecutive_nonfinite == 1
        assert not flags.weights_finite  # the fake engine applied the NaN gradient: caught in the same sync
        assert metrics.micro == 1 and metrics.skipped == 1  # the NaN loss is left out of the logged mean
        guard.stop_signal = 15
        with torch.no_grad():
            for p in engine.module.parameters():
                p.zero_()
        flags = trainer.train_window(engine, objective, data, guard, metrics, 2)
        assert flags.finite == [True, True] and flags.stop and flags.weights_finite
        assert guard.consecutive_nonfinite == 0
    finally:
        guard.restore()


def test_weights_past_float32_range_in_norm_count_as_diverged():
    module = torch.nn.Linear(2, 2)
    with torch.no_grad():
        module.weight.fill_(3e19)  # finite values whose squared norm overflows float32
    assert ckpt.nonfinite_weights(module, torch.device("cpu")).item() == 1.0
    with torch.no_grad():
        module.weight.fill_(1.0)
    assert ckpt.nonfinite_weights(module, torch.device("cpu")).item() == 0.0
