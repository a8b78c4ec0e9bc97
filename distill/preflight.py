"""Before a run writes anything: every check and every model, assembled into a `PreparedRun`.

    run = prepare(cfg, rank, world, device)   # ConfigError (exit 2) on bad input; nothing written
    distill.trainer.run_prepared(cfg, run)    # the loop

The checks, in order: the output and export directories, the teacher (family, positions, window,
the relation loss's memory), its sentence-transformers modules and the embedding loss's pooling,
the --eval_steps task, the checkpoint to resume (its shape, provenance and checksums), the DeepSpeed
JSON, then the models (the student created from the teacher's float32 weights), the data against
the teacher's config and tokenizer and its size against the global batch, and the relation kernel's
self-check. `distill.trainer` is the loop that follows.
"""
from __future__ import annotations

import dataclasses
import os
import random
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from .config import DistillConfig, load_deepspeed_json, resolve_deepspeed_config
from .embedding_loss import POOLING_MODES, PROJECTION_ATTRIBUTE, EmbeddingProjection, EmbeddingSpec
from .encoders import UnsupportedEncoder, check_supported, get_adapter
from .errors import ConfigError
from .monitor import encoder_forward_flops, mfu_unknown_line, peak_flops, step_flops
from .paths import model_load_error
from .relations import resolve_relation_impl

__all__ = ["PreparedRun", "prepare", "build_models", "build_dataset", "check_teacher_fit", "check_data_size",
           "embedding_spec", "embedding_probe", "teacher_modules", "teacher_config_of", "export_dir_of", "set_seed"]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_data_size(num_samples: int, cfg: DistillConfig, world: int) -> None:
    """The data must fill at least one global micro-batch (checked before anything is written)."""
    micro = cfg.per_device_train_batch_size
    if num_samples < micro * world:
        raise ConfigError(f"the data hold {num_samples} samples, fewer than one global micro-batch "
                          f"({micro} per rank x {world} ranks); add data or lower --per_device_train_batch_size")


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
    """ConfigError, before any model is built, unless the teacher's family is supported, --max_seq_length fits
    its positions (and a ModernBERT's local window), and an unchunked relation loss fits its memory budget."""
    adapter = check_supported(teacher_config, "--teacher")  # UnsupportedEncoder, a ConfigError
    limit = adapter.max_positions(teacher_config)
    if limit is not None and cfg.max_seq_len > limit:
        raise ConfigError(f"--max_seq_length {cfg.max_seq_len} exceeds the teacher's {limit} positions "
                          f"({teacher_config.model_type}); use --max_seq_length {limit} or less")
    window = adapter.local_window(teacher_config)
    if window is not None and window > cfg.max_seq_len:
        raise ConfigError(f"--max_seq_length {cfg.max_seq_len} is shorter than the local attention window of "
                          f"{window} tokens that the {teacher_config.model_type} teacher and its student use in "
                          f"their local layers: those layers would attend to every token, unlike the teacher at "
                          f"its length; use --max_seq_length {window} or more")
    try:
        spec = cfg.relation_spec
        if device is not None and spec.impl == "auto":  # the fused kernel, where it runs, is linear in S
            spec = dataclasses.replace(spec, impl=resolve_relation_impl("auto", device))
        spec.check_memory(cfg.per_device_train_batch_size, cfg.max_seq_len)
    except ConfigError as e:
        raise ConfigError(f"--relation_impl {cfg.relation_impl}: {e} (--per_device_train_batch_size, "
                          f"--max_seq_length, --relation_chunk_size)") from None


def teacher_modules(cfg: DistillConfig, teacher, teacher_config, export_format: str | None = None):
    """The sentence-transformers modules the export will write (`export_format`, default --export_format; None: a
    plain export), read from the teacher now, while it is at hand; ConfigError, before any file is written, when
    they cannot be written. With export_format "auto": the teacher's own modules (its pooling), if any."""
    from .sentence_transformers_io import read_teacher_modules

    # a teacher given as a model is read from its directory only (a hub name may not be the model given)
    source = cfg.teacher if teacher is None or Path(os.path.expanduser(cfg.teacher)).is_dir() else None
    return read_teacher_modules(source, export_format or cfg.export_format,  # ConfigError when they cannot be
                                get_adapter(teacher_config).hidden_size(teacher_config))


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
    """The teacher's config; ConfigError naming --teacher when transformers cannot load it (a hub name that does
    not exist or cannot be reached, a directory without a config, remote code)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        if "trust_remote_code" not in str(e):
            raise model_load_error("--teacher", name_or_path, e) from e
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


def prepare(cfg: DistillConfig, rank: int, world: int, device: torch.device, *, teacher=None, student=None,
            dataset=None, tokenizer=None) -> PreparedRun:
    """Every check and every model, before the run writes anything: output dir, export dir, teacher, checkpoint,
    DeepSpeed JSON, models, data, the relation kernel's self-check."""
    from .export import check_export_target, check_student_exportable
    from .objective import MiniLMv2Objective

    cfg.check_paths()
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
    peak = peak_flops(device)  # a bad DISTILL_PEAK_TFLOPS is refused here (ConfigError)
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
        source = tokenizer or cfg.teacher
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except OSError as e:
            raise model_load_error("--teacher" if source == cfg.teacher else "tokenizer", source, e) from e
    return EmbeddingProbe(cfg.eval_task, tokenizer, pooling=pooling, samples=cfg.eval_samples,
                          max_seq_len=cfg.max_seq_len)


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


def export_dir_of(cfg: DistillConfig) -> Path:
    return Path(cfg.export_dir) if cfg.export_dir else Path(cfg.output_dir) / "student"
