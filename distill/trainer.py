"""The DeepSpeed distillation loop: build, step, loop, export.

`train(cfg)` is the whole job. The engine wraps the student only; the teacher is a frozen
plain module on the same device. The step is `train_step`: relation loss, backward, step.
Checkpoint saving and resuming live in `distill.checkpoint`, the logged scalars and FLOP
accounting in `distill.monitor`.
"""
from __future__ import annotations

import functools
import os
import random
import signal
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .checkpoint import TrainState
from .config import ConfigError, DistillConfig, load_deepspeed_json, resolve_deepspeed_config
from .encoders import get_adapter
from .monitor import NullLogger, StepMetrics, TensorBoardLogger, peak_flops, step_flops

MAX_NONFINITE = 10  # consecutive non-finite losses before the run stops


# --------------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, int, torch.device]:
    """Join (or create, for a plain `python` run) the process group; return rank, world, local rank, device."""
    import deepspeed

    if "RANK" not in os.environ:  # a plain single-process run: be rank 0 of 1
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", auto_mpi_discovery=False)
    return dist.get_rank(), dist.get_world_size(), local_rank, device


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class RunGuard:
    """Stop requests (SIGTERM, Ctrl-C) and non-finite losses, agreed on by all ranks.

    One all-reduce of two flags per micro-batch keeps every rank in lockstep: all skip a bad
    micro-batch together, all save and stop together.
    """

    def __init__(self):
        self.stop_signal: int | None = None
        self.consecutive_nonfinite = 0
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        self.stop_signal = signum

    def sync(self, loss: torch.Tensor) -> tuple[bool, bool]:
        """(this micro-batch's loss is finite on every rank, some rank was asked to stop)."""
        flags = torch.stack([(~torch.isfinite(loss.detach())).float(),
                             torch.tensor(float(self.stop_signal is not None), device=loss.device)])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        nonfinite, stop = flags.tolist()  # note: a CPU-GPU sync point, once per micro-batch
        self.consecutive_nonfinite = self.consecutive_nonfinite + 1 if nonfinite else 0
        return not nonfinite, bool(stop)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- data
def batches(dataset, cfg: DistillConfig, state: TrainState, rank: int, world: int,
            collate_fn: Callable | None, pin_memory: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches for this rank, endlessly, from `state`'s (epoch, offset); advances the state."""
    from torch.utils.data import DataLoader

    from .data import WindowSampler

    micro = cfg.per_device_train_batch_size
    if len(dataset) < micro * world:
        raise ConfigError(f"the data hold {len(dataset)} samples, fewer than one global micro-batch "
                          f"({micro} per rank x {world} ranks); add data or lower --per_device_train_batch_size")
    while True:
        sampler = WindowSampler(len(dataset), num_replicas=world, rank=rank, seed=cfg.seed, shuffle=True,
                                drop_last=True, start_sample=state.epoch_offset)
        sampler.set_epoch(state.epoch)
        loader = DataLoader(dataset, batch_size=micro, sampler=sampler, drop_last=True, collate_fn=collate_fn,
                            num_workers=cfg.dataloader_num_workers, pin_memory=pin_memory,
                            worker_init_fn=_ignore_stop_signals if cfg.dataloader_num_workers else None,
                            # its own generator: creating the iterator must not draw from the global RNG
                            generator=torch.Generator().manual_seed(cfg.seed))
        for batch in loader:
            state.epoch_offset += micro * world
            state.samples += micro * world
            yield batch
        state.epoch, state.epoch_offset = state.epoch + 1, 0


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM / Ctrl-C to the main process, which finishes the step and saves.

    A launcher (deepspeed, torchrun, a scheduler) signals the whole process tree; a worker killed
    by it would make the main process raise instead of checkpointing. The loader still shuts its
    workers down itself, and they exit when the main process dies.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# --------------------------------------------------------------------------- the step
def train_step(engine, objective, batch, guard: RunGuard) -> tuple[torch.Tensor, dict, bool, bool]:
    """One micro-batch: teacher and student forward, relation loss, backward, optimizer step.

    DeepSpeed's `engine.step()` applies the update only at the end of each accumulation window.
    Returns (loss, per-relation losses, finite, stop requested). A non-finite loss on any rank
    skips the micro-batch on every rank: no backward, and DeepSpeed's accumulation counter
    does not move, so the window waits for a finite micro-batch in its place.
    """
    loss, parts = objective(batch, student_forward=engine)
    finite, stop = guard.sync(loss)
    if finite:
        engine.backward(loss)
        engine.step()
    return loss.detach(), parts, finite, stop


# --------------------------------------------------------------------------- build
def build_models(cfg: DistillConfig, device: torch.device, teacher=None, student=None):
    """The frozen teacher (from cfg or given) and the student (created from the teacher, or given)."""
    from .student import create_student
    from .teacher import FrozenTeacher

    teacher_dtype = None if cfg.teacher_dtype == "auto" else getattr(torch, cfg.teacher_dtype)
    source = teacher if teacher is not None else cfg.teacher
    if isinstance(source, FrozenTeacher):
        frozen = source
    else:
        layer = cfg.teacher_layer
        if layer is None:
            probe = source.config if hasattr(source, "config") else _load_config(source)
            layer = get_adapter(probe).num_layers(probe)
        frozen = FrozenTeacher(source, layer, dtype=teacher_dtype, device=device)
    if student is None:
        student = create_student(frozen.model, cfg.student_layer, cfg.student_hidden_size, cfg.student_attention_heads,
                                 intermediate_size=cfg.student_intermediate_size, init=cfg.student_init)
    return frozen, student


def _load_config(name_or_path: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name_or_path)


def build_dataset(cfg: DistillConfig, teacher_config):
    from .data import WindowDataset, check_compatible

    dataset = WindowDataset(cfg.data, cfg.max_seq_len)
    check_compatible(dataset.tokenizer_info, teacher_config)
    max_pos = getattr(teacher_config, "max_position_embeddings", None)
    if max_pos is not None and cfg.max_seq_len > max_pos:
        raise ConfigError(f"--max_seq_len {cfg.max_seq_len} exceeds the teacher's {max_pos} position embeddings; "
                          f"use --max_seq_len {max_pos} or less")
    return dataset


# --------------------------------------------------------------------------- the job
def train(cfg: DistillConfig, *, teacher=None, student=None, dataset=None, collate_fn=None,
          tokenizer=None) -> Path:
    """Distil; return the directory of the exported student (on every rank).

    `teacher`, `student`, `dataset`, `collate_fn` override what `cfg` would build (the
    bertdistiller-style API passes its own); by default everything comes from `cfg`.
    """
    from .objective import MiniLMv2Objective

    rank, world, _, device = init_distributed()
    resume_path = ckpt.find_resume(cfg)  # before any model is built
    ds_json, precision = resolve_deepspeed_config(
        cfg, load_deepspeed_json(cfg.deepspeed_config), world_size=world, device_type=device.type,
        bf16_supported=device.type != "cuda" or torch.cuda.is_bf16_supported())

    set_seed(cfg.seed)
    frozen, student = build_models(cfg, device, teacher, student)
    if dataset is None:
        dataset = build_dataset(cfg, frozen.config)
    objective = MiniLMv2Objective(frozen, student, cfg.relation_spec, device=device)
    if rank == 0:
        write_run_files(cfg, student, tokenizer or _tokenizer_source(cfg, frozen))
    dist.barrier()

    engine = initialize_engine(student, ds_json)
    state = ckpt.load_train_state(engine, resume_path) if resume_path is not None else TrainState()
    data = batches(dataset, cfg, state, rank, world, collate_fn, pin_memory=device.type == "cuda")
    if resume_path is not None:  # last, so nothing above draws from the restored generators
        ckpt.restore_rng_state(resume_path, rank)
    flops = functools.partial(step_flops, frozen.config, student.config, frozen.num_layers,
                              len(objective.spec.relations))
    metrics = StepMetrics(device, world=world, precision=precision, peak=peak_flops(device), flops=flops)
    final, stopped = run_loop(cfg, engine, objective, data, state, metrics, rank,
                              last_saved=state.step if resume_path is not None else None)
    if stopped:
        if rank == 0:
            print(f"stopped by signal at step {state.step}; checkpoint {final}; continue with --resume auto",
                  flush=True)
        return final
    return export_student(cfg, final, rank)


def write_run_files(cfg: DistillConfig, student, tokenizer) -> None:
    """Rank 0, before training: output_dir/run_config.json and the student skeleton the export needs."""
    from .export import save_student_skeleton

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "run_config.json")
    save_student_skeleton(student, tokenizer, out / "student_config")


def initialize_engine(student, ds_json: dict[str, Any]):
    """The DeepSpeed engine around the student's trainable parameters."""
    import deepspeed

    params = [p for p in student.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=student, model_parameters=params, config=ds_json)
    return engine


def run_loop(cfg: DistillConfig, engine, objective, data: Iterator[dict], state: TrainState, metrics: StepMetrics,
             rank: int, last_saved: int | None) -> tuple[Path, bool]:
    """Optimizer steps until max_steps or a stop request; log and save on schedule; always end saved.

    Returns (the final checkpoint, whether a stop signal ended the run early).
    """
    from tqdm.auto import tqdm

    is_main = rank == 0  # logs, TensorBoard, progress bar
    device = metrics.device
    logger = TensorBoardLogger(Path(cfg.output_dir) / "tensorboard") if is_main else NullLogger()
    guard = RunGuard()
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc="distill", disable=not is_main, dynamic_ncols=True)
    engine.train()
    stop = False
    try:
        while state.step < cfg.max_steps and not stop:
            accumulated = 0  # finite micro-batches in this optimizer step
            while accumulated < cfg.gradient_accumulation_steps:
                batch = to_device(next(data), device)
                loss, parts, finite, stop_now = train_step(engine, objective, batch, guard)
                stop = stop or stop_now  # honoured at the step boundary, never mid-accumulation
                metrics.add(loss, parts, batch["input_ids"].shape, finite)
                accumulated += finite
                _check_nonfinite(guard, state, cfg)
            state.step += 1
            bar.update(1)
            if state.step % cfg.logging_steps == 0 or state.step == cfg.max_steps:
                scalars = metrics.flush(engine)
                logger.log(state.step, scalars)
                bar.set_postfix(loss=f"{scalars['loss/total']:.4f}", tok_s=f"{scalars['throughput/tokens_per_s']:.0f}")
            if cfg.save_steps and state.step % cfg.save_steps == 0 and state.step < cfg.max_steps:
                ckpt.save_checkpoint(engine, cfg, state, rank)
                last_saved = state.step
        if last_saved != state.step:
            final = ckpt.save_checkpoint(engine, cfg, state, rank)
        else:
            final = ckpt.checkpoints_dir(cfg.output_dir) / ckpt.tag_for_step(state.step)
    finally:
        bar.close()
        logger.close()
        guard.restore()
    return final, stop


def _check_nonfinite(guard: RunGuard, state: TrainState, cfg: DistillConfig) -> None:
    if guard.consecutive_nonfinite >= MAX_NONFINITE:
        raise FloatingPointError(
            f"the loss was not finite for {MAX_NONFINITE} micro-batches in a row (step {state.step}); the run "
            f"stopped without saving. The last good checkpoint is intact under {ckpt.checkpoints_dir(cfg.output_dir)}: "
            "lower --learning_rate, use bf16 instead of fp16, or check the data")


def export_student(cfg: DistillConfig, final: Path, rank: int) -> Path:
    """Rank 0 exports checkpoint `final` as a Hugging Face directory; every rank returns its path."""
    from .export import export_checkpoint

    out = Path(cfg.output_dir)
    export_dir = Path(cfg.export_dir) if cfg.export_dir else out / "student"
    if rank == 0:
        export_checkpoint(final, export_dir, skeleton_dir=out / "student_config")
        print(f"exported the student to {export_dir}", flush=True)
    dist.barrier()
    return export_dir


def _tokenizer_source(cfg: DistillConfig, frozen) -> str:
    return cfg.teacher if isinstance(cfg.teacher, str) else frozen.config.name_or_path
