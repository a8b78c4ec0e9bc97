"""The DeepSpeed distillation loop: build, step, loop, export.

`train(cfg)` is the whole job. The engine wraps the student only; the teacher is a frozen
plain module on the same device. The step is `train_step`: relation loss, backward, step.
Checkpoint saving and resuming live in `distill.checkpoint`, the logged scalars and FLOP
accounting in `distill.monitor`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import random
import signal
import socket
import sys
import types
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .checkpoint import TrainState
from .config import ConfigError, DistillConfig, load_deepspeed_json, resolve_deepspeed_config
from .distributed import LauncherWatch, launcher_watch, watch_launchers
from .embedding_loss import POOLING_MODES, PROJECTION_ATTRIBUTE, EmbeddingProjection, EmbeddingSpec
from .encoders import UnsupportedEncoder, check_supported, get_adapter
from .locks import DirectoryLock, LockedError
from .monitor import (
    NullLogger,
    StepMetrics,
    TensorBoardLogger,
    encoder_forward_flops,
    mfu_unknown_line,
    peak_flops,
    step_flops,
)
from .relations import resolve_relation_impl

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
    if torch.cuda.is_available() and _accelerator_is_cuda():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    watch_launchers()  # now, while the chain of launchers above this rank is whole
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", auto_mpi_discovery=False)
    return dist.get_rank(), dist.get_world_size(), local_rank, device


def _accelerator_is_cuda() -> bool:
    """DeepSpeed's accelerator is CUDA. Under DS_ACCELERATOR=cpu its launcher still sets CUDA_VISIBLE_DEVICES=0,1,...
    for the ranks, so on a GPU node CPU ranks see GPUs: they train on the CPU with gloo all the same."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cuda"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def check_data_size(num_samples: int, cfg: DistillConfig, world: int) -> None:
    """The data must fill at least one global micro-batch (checked before anything is written)."""
    micro = cfg.per_device_train_batch_size
    if num_samples < micro * world:
        raise ConfigError(f"the data hold {num_samples} samples, fewer than one global micro-batch "
                          f"({micro} per rank x {world} ranks); add data or lower --per_device_train_batch_size")


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


# --------------------------------------------------------------------------- build
def build_models(cfg: DistillConfig, device: torch.device, teacher=None, student=None, teacher_config=None):
    """The frozen teacher (from cfg or given) and the student (created from the teacher, or given).

    `teacher_config`: the teacher's config (`teacher_config(cfg, teacher)`), if already read.
    """
    from .student import create_student
    from .teacher import FrozenTeacher

    teacher_dtype = None if cfg.teacher_dtype == "auto" else getattr(torch, cfg.teacher_dtype)
    source = teacher if teacher is not None else cfg.teacher
    if isinstance(source, FrozenTeacher):
        frozen = source
    else:
        layer = cfg.teacher_layer
        if layer is None:
            probe = teacher_config if teacher_config is not None else teacher_config_of(cfg, teacher)
            layer = get_adapter(probe).num_layers(probe)
        # float32 on the CPU first: the student is created from the teacher's float32 weights, then it is cast
        frozen = FrozenTeacher(source, layer, dtype=torch.float32 if student is None else teacher_dtype,
                               device="cpu" if student is None else device, run_to_end=cfg.embedding_loss != "none")
    if student is None:
        student = create_student(frozen.model, cfg.student_layer, cfg.student_hidden_size, cfg.student_attention_heads,
                                 intermediate_size=cfg.student_intermediate_size, init=cfg.student_init)
        if frozen is not source:
            frozen.to(device, teacher_dtype)
    if cfg.embedding_loss != "none":
        width = get_adapter(student).hidden_size(student.config)
        if width != frozen.hidden_size and not hasattr(student, PROJECTION_ATTRIBUTE):
            # trains with the student: the engine, its optimizer and its checkpoints hold it
            student.add_module(PROJECTION_ATTRIBUTE, EmbeddingProjection(width, frozen.hidden_size))
    return frozen, student


def embedding_spec(cfg: DistillConfig, modules) -> EmbeddingSpec | None:
    """The embedding loss's settings (None without one): --pooling, else the teacher's sentence-transformers
    Pooling module; ConfigError, before any model is built, when neither gives one usable mode."""
    if cfg.embedding_loss == "none":
        return None
    from .sentence_transformers_io import pooling_modes

    modes = (cfg.pooling,) if cfg.pooling else (pooling_modes(modules) if modules is not None else ())
    if not modes:
        raise ConfigError(f"--embedding_loss {cfg.embedding_loss} needs a pooling: the teacher {cfg.teacher} has no "
                          f"sentence-transformers Pooling module; give --pooling mean, cls or max")
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ConfigError(f"--embedding_loss {cfg.embedding_loss}: the teacher's pooling {'+'.join(modes)} is not "
                          f"one of {', '.join(POOLING_MODES)}; give --pooling mean, cls or max")
    return EmbeddingSpec(cfg.embedding_loss, cfg.embedding_loss_weight, modes[0])


def _load_tokenizer(source):
    """The tokenizer at `source` (a teacher's directory or hub name); None where it has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError):
        return None


def check_teacher_fit(cfg: DistillConfig, teacher_config, device: torch.device | None = None) -> None:
    """ConfigError, before any model is built, unless the teacher's family is supported, --max_seq_len fits
    its positions (and a ModernBERT's local window), and an unchunked relation loss fits its memory budget."""
    try:
        adapter = check_supported(teacher_config, "--teacher")
    except UnsupportedEncoder as e:
        raise ConfigError(str(e)) from None
    limit = adapter.max_positions(teacher_config)
    if limit is not None and cfg.max_seq_len > limit:
        raise ConfigError(f"--max_seq_len {cfg.max_seq_len} exceeds the teacher's {limit} positions "
                          f"({teacher_config.model_type}); use --max_seq_len {limit} or less")
    window = adapter.local_window(teacher_config)
    if window is not None and window > cfg.max_seq_len:
        raise ConfigError(f"--max_seq_len {cfg.max_seq_len} is shorter than the local attention window of "
                          f"{window} tokens that the {teacher_config.model_type} teacher and its student use in "
                          f"their local layers: those layers would attend to every token, unlike the teacher at "
                          f"its length; use --max_seq_len {window} or more")
    try:
        spec = cfg.relation_spec
        if device is not None and spec.impl == "auto":  # the fused kernel, where it runs, is linear in S
            spec = dataclasses.replace(spec, impl=resolve_relation_impl("auto", device))
        spec.check_memory(cfg.per_device_train_batch_size, cfg.max_seq_len)
    except ValueError as e:
        raise ConfigError(f"--relation_impl {cfg.relation_impl}: {e} (--per_device_train_batch_size, "
                          f"--max_seq_len, --relation_chunk_size)") from None


def teacher_modules(cfg: DistillConfig, teacher, teacher_config, export_format: str | None = None):
    """The sentence-transformers modules the export will write (`export_format`, default --export_format; None: a
    plain export), read from the teacher now, while it is at hand; ConfigError, before any file is written, when
    they cannot be written. With export_format "auto": the teacher's own modules (its pooling), if any."""
    from .sentence_transformers_io import read_teacher_modules

    # a teacher given as a model is read from its directory only (a hub name may not be the model given)
    source = cfg.teacher if teacher is None or Path(os.path.expanduser(cfg.teacher)).is_dir() else None
    try:
        return read_teacher_modules(source, export_format or cfg.export_format,
                                    get_adapter(teacher_config).hidden_size(teacher_config))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _own_modules(cfg: DistillConfig, teacher, teacher_config):
    """The teacher's own sentence-transformers modules where the embedding loss or --eval_steps needs its pooling
    (None: none needed, or none readable)."""
    if cfg.embedding_loss == "none" and not cfg.eval_steps:
        return None
    try:
        return teacher_modules(cfg, teacher, teacher_config, "auto")
    except ConfigError:  # modules an export could not write: their pooling is not needed to say what is missing
        return None


def teacher_config_of(cfg: DistillConfig, teacher=None):
    """The config of the teacher the run will use, untruncated (a given FrozenTeacher's own, truncated one)."""
    source = teacher if teacher is not None else cfg.teacher
    return source.config if hasattr(source, "config") else _load_config(source)


def _load_config(name_or_path: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path)
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        # remote code (NomicBERT, gte 'new', JinaBERT): name the model type without running its code
        raise ConfigError(_remote_code_message(name_or_path)) from None


def _remote_code_message(name_or_path: str) -> str:
    import json

    model_type = None
    try:
        from transformers.utils import cached_file

        with open(cached_file(name_or_path, "config.json"), encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except Exception:  # noqa: BLE001 - the message is what matters
        pass
    try:
        check_supported(types.SimpleNamespace(model_type=model_type), "--teacher")
    except UnsupportedEncoder as e:
        return f"{e} ({name_or_path} is remote code: distill does not run a model's own code)"
    return f"--teacher {name_or_path} needs trust_remote_code, which distill does not use"


def build_dataset(cfg: DistillConfig, teacher_config, tokenizer=None):
    """The windows of --data, checked against the teacher's config and tokenizer (`tokenizer`: one, or where to
    load it from; None: none to compare); every shard's sha256 and ids: by default when they total at most
    8 GiB, with --verify_data whatever their size, not with --no_verify_data."""
    from .data import WindowDataset, check_compatible, verify_shards

    if not cfg.data:
        raise ConfigError("--data is required: give a shard directory written by tools/pretokenize.py "
                          "(or pass dataset= to train())")
    dataset = WindowDataset(cfg.data, cfg.max_seq_len, verify=False)  # sizes only: the cheap checks first
    check_compatible(dataset.shards, teacher_config)  # a row for every id, each shard's recorded largest id too
    tokenizer = _load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    if tokenizer is not None:  # the same tokenizer (a padded table would accept another tokenizer's shards)
        check_compatible(dataset.shards, tokenizer, allow_mismatch=cfg.allow_tokenizer_mismatch)
    # reads all the data once (every rank): by default when the shards total at most 8 GiB
    verify_shards(dataset.shards, True if cfg.verify_data else False if cfg.no_verify_data else None)
    return dataset


# --------------------------------------------------------------------------- the job
@dataclasses.dataclass
class PreparedRun:
    """What `prepare` checked and built, before the run writes anything."""

    rank: int
    world: int
    device: torch.device
    frozen: Any  # FrozenTeacher
    student: torch.nn.Module
    objective: Any  # MiniLMv2Objective
    dataset: Any
    ds_json: dict[str, Any]
    precision: str
    resume_path: Path | None
    scorer: Any  # EmbeddingProbe or None
    modules: Any  # the sentence-transformers modules the export writes, or None
    tokenizer: Any
    peak: float | None  # the GPU's peak FLOPs (MFU), None when unknown
    notes: list[str]  # lines for the log and TensorBoard (the optimizer's fallback)


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


def prepare(cfg: DistillConfig, rank: int, world: int, device: torch.device, *, teacher=None, student=None,
            dataset=None, tokenizer=None) -> PreparedRun:
    """Every check and every model, before the run writes anything: output dir, export dir, teacher, checkpoint,
    DeepSpeed JSON, models, data, the relation kernel's self-check."""
    from .export import check_export_target, check_student_exportable
    from .objective import MiniLMv2Objective

    ckpt.check_output_dir(cfg)
    check_export_target(export_dir_of(cfg), "--export_dir", output_dir=cfg.output_dir)
    if student is not None:
        check_student_exportable(student)
    probe = teacher_config_of(cfg, teacher)
    check_teacher_fit(cfg, probe, device)
    modules = teacher_modules(cfg, teacher, probe)  # the sentence-transformers modules the export will write
    own = modules if cfg.export_format == "auto" else _own_modules(cfg, teacher, probe)  # the teacher's pooling
    embedding = embedding_spec(cfg, own)
    scorer = embedding_probe(cfg, own, tokenizer)  # --eval_steps: its data read and checked now
    resume_path = ckpt.find_resume(cfg, probe)  # before any model is built
    notes: list[str] = []  # the optimizer DeepSpeed builds, when not the one the JSON asks for
    ds_json, precision = resolve_deepspeed_config(
        cfg, load_deepspeed_json(cfg.deepspeed_config), world_size=world, device_type=device.type,
        bf16_supported=device.type != "cuda" or torch.cuda.is_bf16_supported(), notes=notes)
    peak = peak_flops(device)  # a bad DISTILL_PEAK_TFLOPS is refused here
    if rank == 0:
        for line in (*notes, mfu_unknown_line(device)):
            if line is not None:
                print(line, flush=True)

    set_seed(cfg.seed)
    frozen, student = build_models(cfg, device, teacher, student, probe)
    if dataset is None:
        dataset = build_dataset(cfg, frozen.config, tokenizer or (cfg.teacher if teacher is None else None))
    check_data_size(len(dataset), cfg, world)
    objective = MiniLMv2Objective(frozen, student, cfg.relation_spec, device=device, embedding=embedding,
                                  student_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision))
    if rank == 0 and objective.kernel_check is not None:  # the fused kernel's self-check (distill.kernels)
        print(objective.kernel_check.line(), flush=True)
    if rank == 0 and embedding is not None:
        print(embedding_cost_line(frozen, student, cfg.max_seq_len), flush=True)
    return PreparedRun(rank, world, device, frozen, student, objective, dataset, ds_json, precision, resume_path,
                       scorer, modules, tokenizer, peak, notes)


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


def embedding_probe(cfg: DistillConfig, modules, tokenizer=None):
    """The --eval_steps probe (None without it), its task read and sampled now; ConfigError on a bad task."""
    if not cfg.eval_steps:
        return None
    from transformers import AutoTokenizer

    from .probe import EmbeddingProbe
    from .sentence_transformers_io import pooling_modes

    modes = pooling_modes(modules) if modules is not None else ()
    pooling = cfg.pooling or (modes[0] if len(modes) == 1 else "mean")
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer or cfg.teacher)
    return EmbeddingProbe(cfg.eval_task, tokenizer, pooling=pooling, samples=cfg.eval_samples,
                          max_seq_len=cfg.max_seq_len)


def run_probe(probe, engine, step: int, rank: int, logger) -> None:
    """Rank 0 scores the student and logs the scores (under ZeRO-3 the other ranks join its forward passes)."""
    if rank == 0:
        scores = probe(engine.module)
        logger.log(step, scores)
        print(probe.line(step, scores), flush=True)
    elif engine.zero_optimization_stage() == 3:
        probe.encode_only(engine.module)


def _check_nonfinite(guard: RunGuard, state: TrainState, cfg: DistillConfig) -> None:
    if guard.consecutive_nonfinite >= MAX_NONFINITE:
        raise FloatingPointError(
            f"the loss was not finite for {MAX_NONFINITE} micro-batches in a row (step {state.step}); the run "
            f"stopped without saving; {ckpt.last_good(cfg.output_dir)}: "
            "lower --learning_rate, use bf16 instead of fp16, or check the data")


def _check_step(engine, state: TrainState, cfg: DistillConfig, skipped: int, flags: StepFlags | None = None) -> int:
    """After an optimizer step: how many steps in a row have now been skipped for a non-finite gradient norm.

    DeepSpeed skips such a step on every rank (fp16 overflows, handled by loss scaling, and windows with a
    non-finite loss, counted by `RunGuard`, are not counted here); MAX_NONFINITE in a row stop the run. A step
    that made the weights non-finite cannot be undone: the run stops at once, without saving, so no checkpoint
    or export ever holds non-finite weights. flags: the step's `RunGuard.sync` (None: the weights are checked
    here, with a sync of their own).
    """
    if not engine.fp16_enabled() and not engine.was_step_applied():
        if flags is not None and not all(flags.finite):
            return skipped  # the loss's doing, counted by RunGuard
        skipped += 1
        if skipped >= MAX_NONFINITE:
            raise FloatingPointError(
                f"the gradient norm was not finite for {MAX_NONFINITE} optimizer steps in a row (step {state.step}); "
                f"the run stopped without saving; {ckpt.last_good(cfg.output_dir)}: lower --learning_rate, "
                "set --max_grad_norm, or check the data")
        return skipped
    if not (flags.weights_finite if flags is not None else ckpt.weights_finite(engine)):
        raise FloatingPointError(
            f"optimizer step {state.step + 1} made the student's weights diverge (not finite, or beyond float32's "
            f"range in norm; gradient norm {engine.get_global_grad_norm()}); the run stopped without saving; "
            f"{ckpt.last_good(cfg.output_dir)}: lower --learning_rate and continue from it")
    return 0


def embedding_cost_line(frozen, student, seq: int) -> str:
    """What the embedding loss costs a step: the teacher's layers above the distilled one, and their share of the
    step's matmul FLOPs (the pooling and the projection are negligible)."""
    extra = frozen.num_layers - frozen.teacher_layer
    config = frozen.config
    per_layer = encoder_forward_flops(1, frozen.hidden_size, frozen.adapter.intermediate_size(config), 1, seq,
                                      frozen.adapter.mlp_matrices)
    total = step_flops(config, student.config, frozen.num_layers, 1, 1, seq, run_to_end=True)
    return (f"embedding loss: the teacher runs all {frozen.num_layers} layers (the relation loss alone needs "
            f"{frozen.teacher_layer}, stopped at its Q/K/V): {extra} more layer(s) and the rest of layer "
            f"{frozen.teacher_layer}, about {100 * (extra + 1) * per_layer / total:.0f}% of a step's matmul FLOPs "
            f"at {seq} tokens; logged as loss/embedding")


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


def export_dir_of(cfg: DistillConfig) -> Path:
    return Path(cfg.export_dir) if cfg.export_dir else Path(cfg.output_dir) / "student"


def _tokenizer_source(cfg: DistillConfig, frozen) -> str:
    return cfg.teacher if isinstance(cfg.teacher, str) else frozen.config.name_or_path
