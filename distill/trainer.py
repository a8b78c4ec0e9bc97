"""The DeepSpeed distillation loop: step, loop, export.

`train(cfg)` is the whole job: `distill.preflight.prepare` checks everything and builds the models
before anything is written, then the loop here runs. The engine wraps the student only; the teacher
is a frozen plain module on the same device. The step is `train_step`: relation loss, backward,
step. Checkpoint saving and resuming live in `distill.checkpoint`, the logged scalars and FLOP
accounting in `distill.monitor`, the process group in `distill.distributed`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .checkpoint import TrainState
from .config import DistillConfig
from .distributed import LauncherWatch, init_distributed, launcher_watch
from .errors import DivergedError
from .locks import DirectoryLock, LockedError
from .monitor import NullLogger, StepMetrics, TensorBoardLogger, step_flops
from .preflight import PreparedRun, export_dir_of, prepare

MAX_NONFINITE = 10  # consecutive non-finite losses before the run stops


# --------------------------------------------------------------------------- stopping
class RunGuard:
    """Stop requests (SIGTERM, Ctrl-C, the launcher's death) and non-finite losses, agreed on by all ranks.

    One all-reduce per optimizer step, at its last micro-batch, keeps every rank in lockstep: which
    micro-batches of the accumulation window had a non-finite loss on some rank, whether some rank
    was asked to stop, and whether the step left some rank's weights non-finite, in one tensor read
    by the host once (`sync`). Nothing in a micro-batch waits for the device. A launcher that died
    (a signal sent to the `deepspeed` or `torchrun` PID alone, which may not forward it) counts as a
    SIGTERM to this rank (`distill.distributed.LauncherWatch`), so the run saves and exits 0 however
    it was stopped.
    """

    def __init__(self, watch: LauncherWatch | None = None):
        self.stop_signal: int | None = None
        self.consecutive_nonfinite = 0
        self.watch = watch if watch is not None else launcher_watch()
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        self.stop_signal = signum

    def _check_launcher(self) -> None:
        gone = self.stop_signal is None and self.watch.gone()
        if gone:
            self.stop_signal = signal.SIGTERM
            try:  # the launcher may have taken the reader of this rank's output with it
                print(f"the launcher {gone.name} (pid {gone.pid}) has exited: every rank saves a checkpoint and stops",
                      file=sys.stderr, flush=True)
            except OSError:
                pass

    def sync(self, losses: list[torch.Tensor], module: torch.nn.Module | None = None) -> StepFlags:
        """The step's flags, agreed on by every rank: one all-reduce and one device-to-host copy.

        losses: the window's micro-batch losses (device scalars); module: the engine's module, whose
        weights are checked after the optimizer step (None: not checked).
        """
        self._check_launcher()
        device = losses[0].device
        stop = torch.tensor([float(self.stop_signal is not None)], device=device)
        weights = ckpt.nonfinite_weights(module, device) if module is not None else torch.zeros(1, device=device)
        flags = torch.cat([stop, weights.reshape(1), (~torch.isfinite(torch.stack(losses).detach().float())).float()])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop_flag, weights_flag, *nonfinite = flags.tolist()  # the step's one CPU-GPU sync point
        for bad in nonfinite:
            self.consecutive_nonfinite = self.consecutive_nonfinite + 1 if bad else 0
        return StepFlags(finite=[not bad for bad in nonfinite], stop=bool(stop_flag), weights_finite=not weights_flag)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclasses.dataclass(frozen=True)
class StepFlags:
    """What `RunGuard.sync` agreed on for one optimizer step: each micro-batch's loss finite on every rank,
    a stop requested on some rank, the weights finite on every rank after the step."""

    finite: list[bool]
    stop: bool
    weights_finite: bool


# --------------------------------------------------------------------------- data
def batches(dataset, cfg: DistillConfig, state: TrainState, rank: int, world: int,
            collate_fn: Callable | None, pin_memory: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches for this rank, endlessly, from `state`'s (epoch, offset); advances the state."""
    from torch.utils.data import DataLoader

    from .data import WindowSampler

    micro = cfg.per_device_train_batch_size
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
def train_step(engine, objective, batch) -> tuple[torch.Tensor, dict]:
    """One micro-batch: teacher and student forward, relation loss, backward, optimizer step.

    DeepSpeed's `engine.step()` applies the update only at the end of each accumulation window.
    Returns (loss, per-relation losses), on the device: nothing here waits for it.
    """
    loss, parts = objective(batch, student_forward=engine)
    engine.backward(loss)
    engine.step()
    return loss.detach(), parts


def train_window(engine, objective, data: Iterator[dict], guard: RunGuard, metrics: StepMetrics,
                 accumulation: int) -> StepFlags:
    """One optimizer step: `accumulation` micro-batches of `train_step`, then the step's one sync (`RunGuard.sync`).

    A micro-batch whose loss is not finite on some rank poisons the window's gradients: DeepSpeed's
    overflow check then skips the whole step on every rank (`engine.was_step_applied()` is False), the
    weights and the learning-rate schedule stay put, and the run takes the step again on the next
    micro-batches. Its loss is left out of the logged mean; MAX_NONFINITE in a row stop the run.
    """
    window = []
    for _ in range(accumulation):
        batch = to_device(next(data), metrics.device)
        loss, parts = train_step(engine, objective, batch)
        window.append((loss, parts, batch["input_ids"].shape))
    flags = guard.sync([loss for loss, _, _ in window], engine.module)
    for (loss, parts, shape), finite in zip(window, flags.finite, strict=True):
        metrics.add(loss, parts, shape, finite)
    return flags


# --------------------------------------------------------------------------- the job
def train(cfg: DistillConfig, *, teacher=None, student=None, dataset=None, collate_fn=None,
          tokenizer=None) -> Path:
    """Distil; return the directory of the exported student (on every rank).

    `teacher`, `student`, `dataset`, `collate_fn` override what `cfg` would build (the
    bertdistiller-style API passes its own); by default everything comes from `cfg`.
    Rank 0 holds output_dir's lock (`distill.locks`) from its first write to the end: a second run
    into the same directory exits 2 naming this one.
    """
    rank, world, _, device = init_distributed()
    lock = DirectoryLock(cfg.output_dir, "distillation run")
    on_rank0_agreed(lock.check_free, rank)  # a run already working in output_dir is named before anything else
    run = prepare(cfg, rank, world, device, teacher=teacher, student=student, dataset=dataset, tokenizer=tokenizer)
    on_rank0_agreed(lock.acquire, rank)  # the first write: from here on, no other run can enter output_dir
    try:
        if rank == 0 and lock.recovered_line():
            print(lock.recovered_line(), flush=True)
        return run_prepared(cfg, run, collate_fn)
    finally:
        lock.release()


def run_prepared(cfg: DistillConfig, run: PreparedRun, collate_fn=None) -> Path:
    """`train` from its first write on (output_dir locked): run files, engine, loop, export."""
    rank, frozen, student = run.rank, run.frozen, run.student
    if rank == 0:
        if cfg.overwrite_output_dir:
            ckpt.clear_run_files(cfg.output_dir, export_dir_of(cfg))
        write_run_files(cfg, student, run.tokenizer or _tokenizer_source(cfg, frozen), run.modules)
    dist.barrier()

    engine = initialize_engine(student, run.ds_json)
    resume_path = run.resume_path
    state = ckpt.load_train_state(engine, resume_path) if resume_path is not None else TrainState()
    data = batches(run.dataset, cfg, state, rank, run.world, collate_fn, pin_memory=run.device.type == "cuda")
    if resume_path is not None:  # last, so nothing above draws from the restored generators
        ckpt.restore_rng_state(resume_path, rank)
    flops = functools.partial(step_flops, frozen.config, student.config, frozen.num_layers,
                              len(run.objective.spec.relations), run_to_end=frozen.run_to_end)
    metrics = StepMetrics(run.device, world=run.world, precision=run.precision, peak=run.peak, flops=flops)
    final, stopped = run_loop(cfg, engine, run.objective, data, state, metrics, rank,
                              last_saved=state.step if resume_path is not None else None, probe=run.scorer,
                              notes=run.notes)
    if stopped:
        if rank == 0:
            print(f"stopped by signal at step {state.step}; checkpoint {final}; continue with --resume auto",
                  flush=True)
        return final
    return export_student(cfg, final, rank)


def on_rank0_agreed(action: Callable[[], Any], rank: int) -> None:
    """Rank 0 runs `action`; a LockedError it raises is raised on every rank, so all exit 2 together."""
    failure = None
    if rank == 0:
        try:
            action()
        except LockedError as e:
            failure = str(e)
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [failure]
        dist.broadcast_object_list(box, src=0)
        failure = box[0]
    if failure is not None:
        raise LockedError(failure)


def write_run_files(cfg: DistillConfig, student, tokenizer, modules=None) -> None:
    """Rank 0, before training: output_dir/run_config.json and the student skeleton the export needs (with the
    sentence-transformers `modules` of `teacher_modules`, if any)."""
    from .export import save_student_skeleton

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "run_config.json")
    save_student_skeleton(student, tokenizer, out / "student_config", modules)


def initialize_engine(student, ds_json: dict[str, Any]):
    """The DeepSpeed engine around the student's trainable parameters."""
    import deepspeed

    params = [p for p in student.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=student, model_parameters=params, config=ds_json)
    return engine


def run_loop(cfg: DistillConfig, engine, objective, data: Iterator[dict], state: TrainState, metrics: StepMetrics,
             rank: int, last_saved: int | None, probe=None, notes: tuple[str, ...] | list[str] = ()
             ) -> tuple[Path, bool]:
    """Optimizer steps until max_steps or a stop request; log and save on schedule; always end saved.
    `probe` (an `EmbeddingProbe`, --eval_steps): the student's embedding scores at step 0 of a fresh run and
    every eval_steps steps. `notes`: lines (the optimizer's fallback) written to TensorBoard once.

    Returns (the final checkpoint, whether a stop signal ended the run early).
    """
    from tqdm.auto import tqdm

    is_main = rank == 0  # logs, TensorBoard, progress bar
    logger = TensorBoardLogger(Path(cfg.output_dir) / "tensorboard") if is_main else NullLogger()
    if getattr(objective, "kernel_check", None) is not None:
        logger.log_text("relation_kernel/self_check", objective.kernel_check.line())
    for i, note in enumerate(notes):  # printed once before training; kept with the run's scalars too
        logger.log_text(f"run/notes/{i}", note)
    guard = RunGuard()
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc="distill", disable=not is_main, dynamic_ncols=True)
    engine.train()
    stop, skipped = False, 0  # skipped: optimizer steps in a row DeepSpeed skipped (non-finite gradient norm)
    try:
        if probe is not None and state.step == 0:
            run_probe(probe, engine, state.step, rank, logger)
        while state.step < cfg.max_steps and not stop:
            flags = train_window(engine, objective, data, guard, metrics, cfg.gradient_accumulation_steps)
            stop = flags.stop  # honoured at the step boundary, never mid-accumulation
            _check_nonfinite(guard, state, cfg)
            skipped = _check_step(engine, state, cfg, skipped, flags)
            if skipped or not engine.was_step_applied():
                # the weights did not move (a non-finite gradient norm, or an fp16 overflow that halved the
                # loss scale) nor did the learning-rate schedule: the step is taken again on the next micro-batches
                continue
            state.step += 1
            bar.update(1)
            if state.step % cfg.logging_steps == 0 or state.step == cfg.max_steps:
                scalars = metrics.flush(engine)
                logger.log(state.step, scalars)
                bar.set_postfix(loss=f"{scalars['loss/total']:.4f}", tok_s=f"{scalars['throughput/tokens_per_s']:.0f}")
            if probe is not None and state.step % cfg.eval_steps == 0:
                run_probe(probe, engine, state.step, rank, logger)
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


def run_probe(probe, engine, step: int, rank: int, logger) -> None:
    """Rank 0 scores the student and logs the scores (under ZeRO-3 the other ranks join its forward passes)."""
    if rank == 0:
        scores = probe(engine.module)
        logger.log(step, scores)
        print(probe.line(step, scores), flush=True)
    elif engine.zero_optimization_stage() == 3:
        probe.encode_only(engine.module)


def _check_nonfinite(guard: RunGuard, state: TrainState, cfg: DistillConfig) -> None:
    """DivergedError (exit 3) after MAX_NONFINITE micro-batches in a row whose loss was not finite."""
    if guard.consecutive_nonfinite >= MAX_NONFINITE:
        raise DivergedError(
            f"the run diverged: the loss was not finite for {MAX_NONFINITE} micro-batches in a row (step "
            f"{state.step}); the run stopped without saving; {ckpt.last_good(cfg.output_dir)}: "
            "lower --learning_rate, use bf16 instead of fp16, or check the data")


def _check_step(engine, state: TrainState, cfg: DistillConfig, skipped: int, flags: StepFlags | None = None) -> int:
    """After an optimizer step: how many steps in a row have now been skipped for a non-finite gradient norm.

    DeepSpeed skips such a step on every rank (fp16 overflows, handled by loss scaling, and windows with a
    non-finite loss, counted by `RunGuard`, are not counted here); MAX_NONFINITE in a row stop the run (DivergedError,
    exit 3). A step that made the weights non-finite cannot be undone: the run stops at once, without saving, so no
    checkpoint or export ever holds non-finite weights. flags: the step's `RunGuard.sync` (None: the weights are checked
    here, with a sync of their own).
    """
    if not engine.fp16_enabled() and not engine.was_step_applied():
        if flags is not None and not all(flags.finite):
            return skipped  # the loss's doing, counted by RunGuard
        skipped += 1
        if skipped >= MAX_NONFINITE:
            raise DivergedError(
                f"the run diverged: the gradient norm was not finite for {MAX_NONFINITE} optimizer steps in a row "
                f"(step {state.step}); the run stopped without saving; {ckpt.last_good(cfg.output_dir)}: lower "
                "--learning_rate, set --max_grad_norm, or check the data")
        return skipped
    if not (flags.weights_finite if flags is not None else ckpt.weights_finite(engine)):
        raise DivergedError(
            f"the run diverged: optimizer step {state.step + 1} made the student's weights diverge (not finite, or "
            f"beyond float32's range in norm; gradient norm {engine.get_global_grad_norm()}); the run stopped without "
            f"saving; {ckpt.last_good(cfg.output_dir)}: lower --learning_rate and continue from it")
    return 0


def export_student(cfg: DistillConfig, final: Path, rank: int) -> Path:
    """Rank 0 exports checkpoint `final` as a Hugging Face directory; every rank returns its path."""
    from .export import export_checkpoint

    out = Path(cfg.output_dir)
    export_dir = export_dir_of(cfg)
    if rank == 0:
        with deferred_stop_signals() as received:  # SIGTERM or Ctrl-C now: the export finishes first
            export_checkpoint(final, export_dir, skeleton_dir=out / "student_config", export_format=cfg.export_format,
                              embedding_projection=cfg.embedding_projection)
        print(f"exported the student to {export_dir}", flush=True)
        if received:
            print(f"{signal.Signals(received[0]).name} received during the export: the export finished first; "
                  f"the run is complete", flush=True)
    dist.barrier()
    return export_dir


@contextlib.contextmanager
def deferred_stop_signals():
    """SIGTERM and SIGINT only recorded (in the yielded list) inside the block, then the previous handlers back.

    The final export takes seconds and is written to a temporary directory renamed into place: finishing it
    leaves the run complete, where being killed halfway would leave a hidden temporary directory behind.
    """
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _tokenizer_source(cfg: DistillConfig, frozen) -> str:
    return cfg.teacher if isinstance(cfg.teacher, str) else frozen.config.name_or_path
