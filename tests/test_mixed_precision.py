"""Mixed precision on CPU, as far as CPU allows.

- A float16 / bfloat16 teacher (and a bfloat16 student) through the whole objective, both loss
  implementations: the loss and the student's gradients stay close to the float32 ones.
- The fp16 loss-scale path: an overflowing step is skipped, the scale halved, the step counter
  unchanged, and `train/loss_scale` logged (a fake engine here; the real DeepSpeed loss scaler in
  `test_a_real_fp16_run_on_cpu_skips_overflowing_steps`).
- A real DeepSpeed run with bf16 enabled on CPU (skipped, naming DeepSpeed's error, where it cannot).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import test_distill_run
import torch
from helpers import REPO, RUN_ENV, padded_batch
from transformers import BertConfig, BertModel

from distill import monitor, trainer
from distill.checkpoint import TrainState
from distill.config import DistillConfig
from distill.monitor import StepMetrics
from distill.objective import MiniLMv2Objective
from distill.student import create_student
from distill.teacher import FrozenTeacher

VOCAB = 99
QKV = {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}

# Measured on this tiny model, relative to the float32 teacher and student (total loss; worst
# relation's loss; whole student gradient): float16 teacher 1.4e-5, 2.8e-4, 4.2e-4; bfloat16 teacher
# 3.8e-4, 1.5e-3, 2.9e-3; a bfloat16 student too 1.2e-3, 2.6e-3, 8e-3. The bounds leave 3x to 8x.
TOLERANCE = {  # (teacher dtype, student dtype): (loss and each relation's loss, student gradient), relative
    (torch.float16, torch.float32): (1e-3, 3e-3),
    (torch.bfloat16, torch.float32): (6e-3, 1.5e-2),
    (torch.float16, torch.bfloat16): (1.5e-2, 4e-2),  # the GPU default: fp16 teacher, bf16 student
    (torch.bfloat16, torch.bfloat16): (1.5e-2, 4e-2),
}


def batch():
    ids, mask = padded_batch(VOCAB, 4, 12, {1: 8, 3: 5})
    return {"input_ids": ids, "attention_mask": mask}


def loss_and_grads(teacher_dtype, student_dtype, impl):
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, initializer_range=0.2)
    torch.manual_seed(0)
    teacher = FrozenTeacher(BertModel(config), 3, dtype=teacher_dtype)
    assert teacher.dtype == teacher_dtype
    torch.manual_seed(2)
    student = create_student(teacher, 2, 16, 2, init="random").eval().to(student_dtype)
    objective = MiniLMv2Objective(teacher, student, num_relation_heads=4, relations=QKV, chunk_size=5,
                                  relation_impl=impl)
    loss, parts = objective(batch())
    loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in student.parameters() if p.grad is not None])
    return loss.detach(), {k: v.detach() for k, v in parts.items()}, grads


@pytest.mark.parametrize("impl", ["chunked", "reference"])
@pytest.mark.parametrize("dtypes", list(TOLERANCE),
                         ids=lambda d: f"teacher_{d[0]}-student_{d[1]}".replace("torch.", ""))
def test_a_half_precision_teacher_through_the_objective_matches_float32(impl, dtypes):
    loss_tol, grad_tol = TOLERANCE[dtypes]
    loss32, parts32, grads32 = loss_and_grads(torch.float32, torch.float32, impl)
    loss, parts, grads = loss_and_grads(*dtypes, impl)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)  # the softmaxes run in float32 whatever the inputs
    assert torch.isfinite(grads).all() and grads.abs().sum() > 0
    assert abs(loss - loss32) / loss32 <= loss_tol
    for name, part in parts.items():
        assert torch.isfinite(part) and abs(part - parts32[name]) / parts32[name] <= loss_tol
    assert (grads - grads32).norm() / grads32.norm() <= grad_tol


@pytest.mark.parametrize("dtypes", [(torch.float16, torch.float32), (torch.float16, torch.bfloat16)])
def test_chunked_and_reference_agree_with_a_half_precision_teacher(dtypes):
    chunked, reference = loss_and_grads(*dtypes, "chunked"), loss_and_grads(*dtypes, "reference")
    torch.testing.assert_close(chunked[0], reference[0], rtol=1e-5, atol=1e-7)
    assert (chunked[2] - reference[2]).norm() / reference[2].norm() <= 1e-4


@pytest.mark.parametrize("dtype, loss_tol, grad_tol", [(torch.float16, 5e-4, 3e-3), (torch.bfloat16, 5e-3, 2e-2)])
def test_the_real_teacher_in_half_precision_through_the_objective(teacher_dir, dtype, loss_tol, grad_tol):
    """The offline MiniLM teacher on real text; measured: float16 6e-5 (loss) and 6.5e-4 (gradient),
    bfloat16 1.1e-3 and 4.7e-3, the same for both implementations."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    enc = tokenizer(["The teacher is frozen and truncated, and its relations are distilled.", "Short one."],
                    padding=True, return_tensors="pt")
    real_batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    results = {}
    for teacher_dtype in (torch.float32, dtype):
        teacher = FrozenTeacher(teacher_dir, 6, dtype=teacher_dtype)
        torch.manual_seed(0)
        student = create_student(teacher, 2, 128, 4, init="random").eval()
        for impl in ("chunked", "reference"):
            student.zero_grad()
            objective = MiniLMv2Objective(teacher, student, num_relation_heads=32, relations=QKV, chunk_size=4,
                                          relation_impl=impl)
            loss, _ = objective(real_batch)
            loss.backward()
            objective.remove()
            results[teacher_dtype, impl] = loss.detach(), torch.cat(
                [p.grad.flatten() for p in student.parameters() if p.grad is not None])
    for impl in ("chunked", "reference"):
        (loss32, grads32), (loss, grads) = results[torch.float32, impl], results[dtype, impl]
        assert torch.isfinite(loss) and torch.isfinite(grads).all()
        assert abs(loss - loss32) / loss32 <= loss_tol
        assert (grads - grads32).norm() / grads32.norm() <= grad_tol


# --------------------------------------------------------------------------- the fp16 loss scale
class _Optimizer:
    def __init__(self, **attrs):
        self.__dict__.update(attrs)


class _Config:
    def __init__(self, cur_scale):
        self.cur_scale = cur_scale


@pytest.mark.parametrize("optimizer, expected", [
    (_Optimizer(cur_scale=512.0, loss_scale=512.0), 512.0),  # DeepSpeed's ZeRO-1/2/3 optimizers
    (_Optimizer(loss_scale=256.0), 256.0),  # its FP16_Optimizer / FP16_UnfusedOptimizer (a property)
    (_Optimizer(loss_scale_config=_Config(128.0)), 128.0),  # DeepSpeed >= 0.18 keeps it there too
    (_Optimizer(loss_scaler=_Config(64.0)), 64.0),  # older ZeRO optimizers
    (_Optimizer(), None),
    (None, None),
])
def test_the_loss_scale_is_read_from_whichever_attribute_the_optimizer_has(optimizer, expected):
    class Engine:
        pass

    engine = Engine()
    engine.optimizer = optimizer
    engine.loss_scale = lambda: 0  # DeepSpeed's engine.loss_scale() is the configured (static) scale: never read
    assert monitor.loss_scale_of(engine) == expected


class FakeFp16Engine:
    """A DeepSpeed engine under fp16 dynamic loss scaling (scale 2^16, hysteresis 1), without CUDA.

    `overflow_at` are the (1-based) calls of `step()` whose gradients overflow: DeepSpeed skips the
    update there, halves the scale and leaves the learning-rate schedule where it was.
    """

    def __init__(self, overflow_at=(), fp16=True):
        self.module = torch.nn.Linear(2, 2)
        self.optimizer = _Optimizer(cur_scale=2.0 ** 16 if fp16 else 1.0)
        self.overflow_at, self.fp16 = set(overflow_at), fp16
        self.calls = self.applied = 0
        self._applied = False

    def train(self):
        pass

    def __call__(self, *a, **k):
        raise AssertionError("the fake objective does not run the student")

    def backward(self, loss):
        pass

    def step(self):
        self.calls += 1
        self._applied = self.calls not in self.overflow_at
        if self._applied:
            self.applied += 1
        elif self.fp16:
            self.optimizer.cur_scale /= 2

    def was_step_applied(self):
        return self._applied

    def fp16_enabled(self):
        return self.fp16

    def gradient_accumulation_steps(self):
        return 1

    def get_lr(self):
        return [1e-3 * self.applied]  # the schedule moves with applied steps only

    def get_global_grad_norm(self):
        return 1.0 if self._applied else float("inf")


def fake_objective(batch, student_forward=None):
    return torch.tensor(0.5), {"qq": torch.tensor(0.5)}


def run_fake_loop(tmp_path, monkeypatch, engine, precision, max_steps=4):
    saved = []
    monkeypatch.setattr(trainer.ckpt, "save_checkpoint",
                        lambda engine, cfg, state, rank: saved.append(state.step) or tmp_path / "ckpt")
    cfg = DistillConfig(output_dir=str(tmp_path / "out"), max_steps=max_steps, logging_steps=1, save_steps=0)
    data = iter(lambda: {"input_ids": torch.zeros(2, 8, dtype=torch.long)}, None)
    state = TrainState()
    metrics = StepMetrics(torch.device("cpu"), world=1, precision=precision)
    final, stopped = trainer.run_loop(cfg, engine, fake_objective, data, state, metrics, rank=0, last_saved=None)
    assert not stopped and saved == [max_steps]
    return state, tensorboard_scalars(tmp_path / "out" / "tensorboard")


def tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_an_fp16_overflow_is_skipped_and_not_counted_as_a_step(tmp_path, monkeypatch):
    engine = FakeFp16Engine(overflow_at={2, 3})  # two overflows in a row: a quarter of the scale
    state, scalars = run_fake_loop(tmp_path, monkeypatch, engine, "fp16")
    assert state.step == 4 and engine.calls == 6 and engine.applied == 4  # 4 updates, as --max_steps asks
    assert scalars["train/loss_scale"] == [(1, 2.0 ** 16), (2, 2.0 ** 14), (3, 2.0 ** 14), (4, 2.0 ** 14)]
    # the logged step and the learning-rate schedule stay together: step k is the k-th applied update
    assert [v for _, v in scalars["train/learning_rate"]] == pytest.approx([1e-3, 2e-3, 3e-3, 4e-3])


def test_the_loss_scale_is_logged_only_under_fp16(tmp_path, monkeypatch):
    state, scalars = run_fake_loop(tmp_path, monkeypatch, FakeFp16Engine(fp16=False), "bf16", max_steps=2)
    assert state.step == 2 and "train/loss_scale" not in scalars and "train/learning_rate" in scalars


# --------------------------------------------------------------------------- real DeepSpeed runs on CPU
ENV = RUN_ENV
tiny_run = test_distill_run.tiny  # the fixture: a tiny BERT teacher and its shards


def run_args(tiny: Path, out: Path, **overrides) -> list[str]:
    """test_distill_run's tiny run (2 student layers of 16, 32 tokens, 4 windows a step), 6 steps, all logged."""
    return test_distill_run.distill_args(tiny, out,
                                         **{"max_steps": 6, "logging_steps": 1, "save_steps": 0, **overrides})


def run_patched(patch: str, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """launch/distill.py in one process (gloo, CPU accelerator), after the Python statements `patch`."""
    script = f"import runpy, sys\n{patch}\nsys.argv = ['launch/distill.py'] + {args!r}\n" \
             "runpy.run_path('launch/distill.py', run_name='__main__')\n"
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def model_states(out: Path, step: int) -> dict:
    return torch.load(out / "checkpoints" / f"step-{step:08d}" / "mp_rank_00_model_states.pt", map_location="cpu",
                      weights_only=False)


@pytest.mark.slow
def test_a_real_bf16_run_on_cpu(tiny_run, tmp_path):
    """`--precision bf16` on CPU: DeepSpeed's bf16 ZeRO-1 engine, an fp16 teacher, through export."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "bf16"
    proc = run_patched("", run_args(tiny_run, out, precision="bf16", teacher_dtype="float16",
                                    deepspeed_config="ds_configs/cpu.json"))
    refusal = [line.strip() for line in proc.stderr.splitlines() if "bf16" in line and "not supported" in line]
    if proc.returncode != 0 and refusal:  # DeepSpeed: "ValueError: Type bf16 is not supported on your device."
        import deepspeed

        pytest.skip(f"DeepSpeed {deepspeed.__version__} cannot train bf16 on this CPU: {refusal[-1]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    states = model_states(out, 6)
    assert {t.dtype for t in states["module"].values() if t.is_floating_point()} == {torch.bfloat16}
    assert states["global_steps"] == 6 and states["skipped_steps"] == 0
    scalars = tensorboard_scalars(out / "tensorboard")
    losses = [v for _, v in scalars["loss/total"]]
    assert len(losses) == 6 and all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0]
    assert "train/loss_scale" not in scalars  # bf16 has no loss scaling
    assert json.loads((out / "run_config.json").read_text())["precision"] == "bf16"
    from transformers import AutoModel

    student = AutoModel.from_pretrained(out / "student")
    assert all(torch.isfinite(p).all() for p in student.parameters())


# DeepSpeed refuses fp16 on a CPU without AVX512-FP16 ("Type fp16 is not supported on your device."),
# and distill refuses it on CPU: the patch lifts both checks so that DeepSpeed's real ZeRO fp16
# optimizer and dynamic loss scaler run here. Relation-loss calls 3 and 4 are multiplied by 1e6: still
# finite in float32, so the step runs, but their gradients times the 2^16 scale overflow float16.
FP16_PATCH = """
import json
import distill.objective as o, distill.preflight as t
from deepspeed.accelerator import get_accelerator
get_accelerator().is_fp16_supported = lambda: True
resolve = t.resolve_deepspeed_config
t.resolve_deepspeed_config = lambda cfg, ds, **k: resolve(cfg, ds, **{**k, "device_type": "cuda"})
real, calls = o.relation_loss, [0]
def overflowing(*a, **k):
    calls[0] += 1
    loss, parts = real(*a, **k)
    return (loss * 1e6, parts) if calls[0] in (3, 4) else (loss, parts)
o.relation_loss = overflowing
"""


@pytest.mark.slow
def test_a_real_fp16_run_on_cpu_skips_overflowing_steps(tiny_run, tmp_path):
    """ds_configs/single_gpu_fp16.json (scale 2^16, hysteresis 2) with DeepSpeed's real loss scaler."""
    pytest.importorskip("deepspeed")
    ds = json.loads((REPO / "ds_configs" / "single_gpu_fp16.json").read_text())
    ds["optimizer"]["params"]["torch_adam"] = True  # DeepSpeed's fused Adam is a CUDA kernel
    (tmp_path / "fp16.json").write_text(json.dumps(ds))
    out = tmp_path / "fp16"
    proc = run_patched(FP16_PATCH, run_args(tiny_run, out, deepspeed_config=tmp_path / "fp16.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    states = model_states(out, 6)
    assert {t.dtype for t in states["module"].values() if t.is_floating_point()} == {torch.float16}
    # 8 optimizer steps were taken, 2 skipped for overflow: the run counts the 6 applied ones
    assert states["global_steps"] == 8 and states["skipped_steps"] == 2
    scalars = tensorboard_scalars(out / "tensorboard")
    assert [s for s, _ in scalars["loss/total"]] == [1, 2, 3, 4, 5, 6]
    # hysteresis 2: the first overflow only spends the hysteresis, the second halves the scale
    assert [v for _, v in scalars["train/loss_scale"]] == [2.0 ** 16] * 2 + [2.0 ** 15] * 4
    # the schedule did not move on the skipped steps, nor did the step counter: step k has the k-th rate
    assert [v for _, v in scalars["train/learning_rate"]] == pytest.approx(warmup_decay_rates(2e-3, 2, 6))
    assert "train/skipped_nonfinite" not in scalars  # an overflow is not a non-finite loss


def warmup_decay_rates(lr: float, warmup: int, total: int) -> list[float]:
    """DeepSpeed's WarmupDecayLR (linear warmup) after 1..total scheduler steps."""
    from deepspeed.runtime.lr_schedules import WarmupDecayLR

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    schedule = WarmupDecayLR(optimizer, total_num_steps=total, warmup_min_lr=0, warmup_max_lr=lr,
                             warmup_num_steps=warmup, warmup_type="linear")
    rates = []
    for _ in range(total):
        schedule.step()
        rates.append(schedule.get_last_lr()[0])
    return rates
