"""The one run config: a dataclass whose fields are the CLI flags of `launch/distill.py`.

Precedence: dataclass defaults < `--config FILE.json` < command-line flags. Unknown keys in
the JSON file are refused. Every field has a one-line docstring (shown by `--help`), and
`__post_init__` checks say how to fix a mistake: every value has its field's type (a JSON value
must already be one: no text for numbers, no 3.0 for an integer, null only for optional fields),
every number is finite and in range. Making a config touches no file and imports no heavy library
(`--help` does not import torch); `check_paths` (the run's first check, in `distill.preflight`)
then checks that the teacher path (when it is one) and the shard directory exist. All of it before
any model is loaded or any file written.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .cli_args import add_arguments, field_value, flag, option
from .errors import ConfigError
from .paths import resolve_model_source
from .relation_spec import RelationSpec, checked_relations, divisors
from .sentence_transformers_io import EXPORT_FORMATS

EMBEDDING_LOSSES = ("none", "mse", "cosine")  # --embedding_loss (distill.embedding_loss)
POOLING_MODES = ("mean", "cls", "max")  # --pooling (distill.embedding_loss)


@dataclass
class DistillConfig:
    # -- teacher and student ----------------------------------------------------------
    teacher: str = option("teacher: a Hugging Face hub name or a local model directory",
                          default="google-bert/bert-base-uncased")
    teacher_layer: int | None = option("1-based teacher layer whose Q/K/V are distilled (default: the last)",
                                       default=None)
    teacher_dtype: str = option("teacher precision: auto (float16 on CUDA, float32 on CPU), float16, bfloat16, float32",
                                default="auto")
    student_layer: int = option("number of student layers; its last layer's Q/K/V are distilled", default=6)
    student_hidden_size: int = option("student width", default=384)
    student_attention_heads: int = option("student attention heads (must divide student_hidden_size)", default=12)
    student_intermediate_size: int | None = option("student feed-forward width (default: student_hidden_size x the "
                                                    "teacher's feed-forward/width ratio, i.e. 4 x for BERT)",
                                                    default=None)
    student_init: str = option("teacher: copy embeddings and a slice of teacher layers; random: the "
                               "architecture's init", default="teacher")
    # -- loss ---------------------------------------------------------------------------
    num_relation_heads: int = option("relation heads A_r (must divide the teacher's and the student's widths)",
                                     default=48)
    relations: str = option("relations and weights, e.g. qq:1,kk:1,vv:1 (q=query, k=key, v=value)",
                            default="qq:1,kk:1,vv:1")
    relation_impl: str = option("relation loss: auto (fused Triton kernels on CUDA when triton is installed, else "
                                "chunked), chunked, reference, triton",
                                default="auto")
    relation_chunk_size: int = option("query rows per chunk of the relation loss: memory O(chunk x seq) instead of "
                                      "O(seq^2) (0: the unchunked reference)",
                                      default=128)
    embedding_loss: str = option("add a loss on the pooled sentence embeddings: none (pure MiniLMv2), mse or cosine "
                                 "(the student's pooled last layer, projected to the teacher's width where they "
                                 "differ, against the teacher's; the teacher then runs all its layers)",
                                 default="none")
    embedding_loss_weight: float = option("weight of the embedding loss next to the relation losses", default=1.0)
    pooling: str | None = option("pooling of the embedding loss and the --eval_steps scores: mean, cls or max "
                                 "(default: the teacher's sentence-transformers Pooling module, else mean for "
                                 "--eval_steps; the embedding loss needs one or the other)",
                                 default=None)
    embedding_projection: str = option("where the widths differ, the embedding loss's learned projection "
                                       "(student width -> teacher width) is exported as a sentence-transformers "
                                       "Dense module (export) or dropped (drop)",
                                       default="export")
    # -- data ---------------------------------------------------------------------------
    data: str = option("a shard directory written by tools/pretokenize.py", default="")
    verify_data: bool = option("before training, check every shard's sha256, that every token id is below the "
                               "vocabulary size and each shard's largest id, whatever the shards' size (reads all "
                               "the data once; by default shards up to 8 GiB are checked)", default=False)
    no_verify_data: bool = option("skip the default check of the shards' data (done when they total at most 8 GiB); "
                                  "sizes are still checked and a window with an id outside the vocabulary still "
                                  "stops the run", default=False)
    allow_tokenizer_mismatch: bool = option("train on shards whose tokenizer signature (vocabulary entries, "
                                            "lower-casing or other normalizer, pre-tokenizer or model settings) "
                                            "differs from the teacher's tokenizer: a warning instead of an error",
                                            default=False)
    max_seq_len: int = option("tokens per training window, [CLS] and [SEP] included", default=128)
    dataloader_num_workers: int = option("DataLoader worker processes per rank", default=2)
    # -- optimisation (these also fill the DeepSpeed JSON's "auto" values) ---------------------
    per_device_train_batch_size: int = option("windows per micro-batch on each GPU/rank", default=32)
    gradient_accumulation_steps: int = option("micro-batches accumulated per optimizer step", default=1)
    learning_rate: float = option("peak learning rate after warmup", default=6e-4)
    weight_decay: float = option("AdamW weight decay", default=0.01)
    adam_beta1: float = option("AdamW beta1", default=0.9)
    adam_beta2: float = option("AdamW beta2", default=0.999)
    adam_epsilon: float = option("AdamW epsilon", default=1e-6)
    warmup_steps: int = option("linear warmup steps from 0, then linear decay to 0 at max_steps (DeepSpeed's "
                               "WarmupDecayLR warms up for at least 2)",
                               default=0)
    max_steps: int = option("optimizer steps of the whole run", default=1000)
    max_grad_norm: float = option("gradient clipping norm (0 disables)", default=1.0)
    precision: str = option("student precision: auto (from the DeepSpeed JSON, else bf16 on GPUs that have it, fp16 on "
                            "others, fp32 on CPU), bf16, fp16, fp32; bf16 also runs on CPU (DeepSpeed's CPU "
                            "accelerator, tested), fp16 is refused there",
                            default="auto")
    # -- run ----------------------------------------------------------------------------
    output_dir: str = option("checkpoints, TensorBoard logs and the exported student go here", default="runs/distill")
    logging_steps: int = option("write TensorBoard scalars every N optimizer steps", default=10)
    save_steps: int = option("save a checkpoint every N optimizer steps (0: only at the end)", default=1000)
    save_total_limit: int | None = option("keep only the newest N checkpoints (default: keep all)", default=None)
    eval_steps: int = option("every N optimizer steps (and at step 0, the undistilled student), score the student's "
                             "frozen embeddings on --eval_task and log them to TensorBoard (0: never)",
                             default=0)
    eval_task: str = option("the task of --eval_steps: reviews (offline, from the demo's assets) or a labelled "
                            "CSV/JSONL/parquet file with text and label columns",
                            default="reviews")
    eval_samples: int = option("texts of --eval_task scored at each --eval_steps (a fixed subset, the same every time)",
                               default=1000)
    resume: str | None = option("a checkpoint directory to continue from, or 'auto' for the newest complete one in "
                                "output_dir",
                                default=None)
    overwrite_output_dir: bool = option("delete the run files (run_config.json, student_config/, checkpoints/, "
                                        "tensorboard/, the exported student) already in output_dir before a fresh "
                                        "run; anything else in it is left alone",
                                        default=False)
    seed: int = option("seed of initialisation, data order and dropout", default=42)
    deepspeed_config: str = option("DeepSpeed JSON (see ds_configs/), its 'auto' values filled from these flags; auto: "
                                   "ZeRO-1, AdamW, bf16/fp16 on GPU, fp32 on CPU",
                                   default="auto")
    export_dir: str | None = option("where the final student is exported as a Hugging Face directory (default: "
                                    "OUTPUT_DIR/student)",
                                    default=None)
    export_format: str = option("auto: the student is also a sentence-transformers model when the teacher is one "
                                "(its pooling, Normalize, and Dense where the widths allow); hf: a plain Hugging Face "
                                "encoder; sentence-transformers: also for a plain teacher (mean pooling; needs "
                                "pip install 'distill[embeddings]')",
                                default="auto")

    def __post_init__(self):
        def need(cond: bool, msg: str):
            if not cond:
                raise ConfigError(msg)

        for f in fields(self):  # the type first: the checks below compare numbers
            try:
                value = field_value(DistillConfig, f.name, getattr(self, f.name), label=f"{flag(f.name)} ")
                setattr(self, f.name, value)
            except TypeError as e:
                raise ConfigError(str(e)) from e
        self._check_numbers()
        need(bool(self.teacher),
             "--teacher is empty: give a hub name (google-bert/bert-base-uncased) or a model directory")
        need(not (self.verify_data and self.no_verify_data),
             "--verify_data and --no_verify_data contradict each other: pass one")
        need(bool(str(self.output_dir).strip()),
             "--output_dir is empty: give the directory for the run's checkpoints, logs and student (e.g. runs/minilm)")
        need(self.teacher_dtype in ("auto", "float16", "bfloat16", "float32"),
             f"--teacher_dtype {self.teacher_dtype!r}: choose auto, float16, bfloat16 or float32")
        need(self.student_hidden_size % self.student_attention_heads == 0,
             f"--student_hidden_size {self.student_hidden_size} is not divisible by --student_attention_heads "
             f"{self.student_attention_heads}; choose heads among {divisors(self.student_hidden_size, 64)}")
        need(self.student_init in ("teacher", "random"),
             f"--student_init {self.student_init!r}: choose teacher or random")
        self._check_relation_spec()
        need(self.warmup_steps <= self.max_steps,
             f"--warmup_steps {self.warmup_steps} must be between 0 and --max_steps {self.max_steps}")
        need(self.precision in ("auto", "bf16", "fp16", "fp32"),
             f"--precision {self.precision!r}: choose auto, bf16, fp16 or fp32")
        need(self.export_format in EXPORT_FORMATS,
             f"--export_format {self.export_format!r}: choose auto, hf or sentence-transformers")
        need(self.embedding_loss in EMBEDDING_LOSSES,
             f"--embedding_loss {self.embedding_loss!r}: choose {', '.join(EMBEDDING_LOSSES)}")
        need(self.pooling is None or self.pooling in POOLING_MODES,
             f"--pooling {self.pooling!r}: choose {', '.join(POOLING_MODES)} (or leave it unset: the teacher's)")
        need(self.embedding_projection in ("export", "drop"),
             f"--embedding_projection {self.embedding_projection!r}: choose export or drop")

    def _check_numbers(self) -> None:
        """Every float finite and in range, every integer in range (see _FLOAT_RANGES and _INT_MINIMA)."""
        for name, ok, rule, example in _FLOAT_RANGES:
            value = getattr(self, name)
            if not (math.isfinite(value) and ok(value)):
                raise ConfigError(f"--{name} {value} must be a finite number {rule} (e.g. {example})")
        for name, low, note in _INT_MINIMA:
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigError(f"{flag(name)} {value} must be >= {low}{note}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed {self.seed} must be between 0 and {2**32 - 1}")

    def check_paths(self) -> None:
        """A teacher meant as a local path exists; the shard directory (when given) is one, sizes checked.

        The first check of a run (`distill.preflight.prepare`), not made when the config is: parsing
        flags touches no file."""
        from .shards import ShardError, ShardSet

        source = resolve_model_source(self.teacher, "--teacher")  # ConfigError naming a path that is not a model
        if self.teacher.startswith("~"):
            self.teacher = source  # expanded: the run's files name the real directory
        if self.data:
            try:
                ShardSet(self.data)
            except ShardError as e:
                raise ConfigError(f"--data {e}") from e

    # -- derived ------------------------------------------------------------------------
    @property
    def relation_spec(self) -> RelationSpec:
        """The relation settings as one RelationSpec (relation_chunk_size 0 -> None, the unchunked reference)."""
        return RelationSpec(self.num_relation_heads, checked_relations(self.relations), self.relation_impl,
                            self.relation_chunk_size or None)

    def _check_relation_spec(self) -> None:
        """RelationSpec checks the settings; its messages name the fields, which are the flags."""
        try:
            checked_relations(self.relations)
        except ConfigError as e:
            raise ConfigError(f"--relations: {e}") from e
        try:
            self.relation_spec.check_widths({"--student_hidden_size": self.student_hidden_size})
        except ConfigError as e:
            raise ConfigError(f"--{e}") from e

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_json

        atomic_write_json(path, self.to_dict())


# (field, in range, the rule as said, an example) for every float field
_FLOAT_RANGES = (
    ("learning_rate", lambda x: x > 0, "> 0", "6e-4"),
    ("weight_decay", lambda x: x >= 0, ">= 0", "0.01"),
    ("adam_beta1", lambda x: 0 <= x < 1, "in [0, 1)", "0.9"),
    ("adam_beta2", lambda x: 0 <= x < 1, "in [0, 1)", "0.999"),
    ("adam_epsilon", lambda x: x > 0, "> 0", "1e-6"),
    ("max_grad_norm", lambda x: x >= 0, ">= 0", "1.0; 0 disables clipping"),
    ("embedding_loss_weight", lambda x: x > 0, "> 0", "1.0"),
)
# (field, its minimum, a note) for every integer field but seed (0 .. 2**32 - 1) and num_relation_heads (RelationSpec)
_INT_MINIMA = (
    ("teacher_layer", 1, " (layers are 1-based; unset: the last)"),
    ("student_layer", 1, ""), ("student_hidden_size", 1, ""), ("student_attention_heads", 1, ""),
    ("student_intermediate_size", 1, " (unset: the teacher's ratio)"),
    ("relation_chunk_size", 0, " (0: unchunked)"),
    ("max_seq_len", 3, " ([CLS] + at least one token + [SEP])"),
    ("dataloader_num_workers", 0, ""),
    ("per_device_train_batch_size", 1, ""), ("gradient_accumulation_steps", 1, ""),
    ("warmup_steps", 0, ""), ("max_steps", 1, ""), ("logging_steps", 1, ""),
    ("save_steps", 0, " (0: save only at the end)"),
    ("save_total_limit", 1, " (or unset to keep all)"),
    ("eval_steps", 0, " (0: never)"), ("eval_samples", 2, ""),
)


# --------------------------------------------------------------------------- CLI
def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """One flag per config field (same name), plus --config and DeepSpeed's launcher flags.

    An absent flag leaves no attribute, so that defaults < --config < flags; "none" unsets an optional field.
    """
    parser = parser or argparse.ArgumentParser(
        description="MiniLMv2 distillation with DeepSpeed (run with `deepspeed launch/distill.py ...`).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="JSON file of field values; flags given on the command line override it")
    add_arguments(parser, DistillConfig, suppress_defaults=True)
    # Set by the deepspeed launcher (and torchrun-style runs); the environment carries the rank.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def config_from_args(argv: list[str] | None = None) -> DistillConfig:
    """Defaults < --config JSON < flags. Unknown JSON keys are refused."""
    args = vars(build_parser().parse_args(argv))
    args.pop("local_rank", None)
    values: dict[str, Any] = {}
    path = args.pop("config", None)
    if path:
        values.update(load_config_file(path))
    values.update(args)
    return DistillConfig(**values)


def _read_json_object(path: str | Path, flag: str, missing_hint: str, object_hint: str) -> dict[str, Any]:
    """The JSON object in `path`, or a ConfigError naming `flag` and the fix."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{flag} {path}: no such file{missing_hint}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{flag} {path} is not valid JSON: {e}") from e
    except OSError as e:  # a directory, no permission
        raise ConfigError(f"{flag} {path} cannot be read ({e.strerror or e}): give a readable JSON file") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{flag} {path} must hold a JSON object{object_hint}")
    return data


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The file's {field: value}, each value of its field's type (cli_args.field_value's rule), named if not."""
    data = _read_json_object(path, "--config", "", " of field: value")
    known = {f.name for f in fields(DistillConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown keys {unknown}; known keys are the flags of "
                          f"`launch/distill.py --help` (e.g. {sorted(known)[:6]} ...)")
    try:
        return {key: field_value(DistillConfig, key, value, label=f"--config {path}: {json.dumps(key)}: ",
                                 show=json.dumps, none="null")
                for key, value in data.items()}
    except TypeError as e:
        raise ConfigError(str(e)) from e


# --------------------------------------------------------------------------- DeepSpeed JSON
def default_deepspeed_config() -> dict[str, Any]:
    """What `--deepspeed_config auto` means: every number from the flags, ZeRO-1, precision by device."""
    return {
        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
        "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
        "optimizer": {"type": "AdamW",
                      "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}},
        "scheduler": {"type": "WarmupDecayLR",
                      "params": {"warmup_min_lr": 0, "warmup_max_lr": "auto", "warmup_num_steps": "auto",
                                 "total_num_steps": "auto", "warmup_type": "linear"}},
        "zero_optimization": {"stage": 1},
        "steps_per_print": 10**9,
    }


def load_deepspeed_json(path: str | Path) -> dict[str, Any]:
    if str(path) == "auto":
        return default_deepspeed_config()
    return _read_json_object(path, "--deepspeed_config", "; pick one of ds_configs/*.json", "")


def resolve_deepspeed_config(cfg: DistillConfig, ds: dict[str, Any], *, world_size: int, device_type: str,
                             bf16_supported: bool = True, notes: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """Fill the DeepSpeed JSON's "auto" (or absent) values from `cfg`; refuse disagreements.

    One source of truth per number: a value written explicitly in the JSON must equal the
    config's, or this raises with both values named. Returns (resolved JSON, precision), the
    precision being "bf16", "fp16" or "fp32". The optimizer: see `_settle_adam`; a line for the
    run's log about it (torch's AdamW instead of DeepSpeed's FusedAdam, and why) goes to `notes`.
    """
    ds = json.loads(json.dumps(ds))  # deep copy
    problems: list[str] = []

    def settle(container: dict, key: str, value: Any, flag: str, label: str):
        current = container.get(key, "auto")
        if current == "auto":
            container[key] = value
        elif not _same(current, value):
            problems.append(f"{label} is {current!r} in the DeepSpeed JSON but {flag} gives {value!r}")

    micro, accum = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    settle(ds, "train_micro_batch_size_per_gpu", micro, "--per_device_train_batch_size",
           "train_micro_batch_size_per_gpu")
    settle(ds, "gradient_accumulation_steps", accum, "--gradient_accumulation_steps", "gradient_accumulation_steps")
    settle(ds, "train_batch_size", micro * accum * world_size,
           f"--per_device_train_batch_size x --gradient_accumulation_steps x {world_size} ranks", "train_batch_size")
    settle(ds, "gradient_clipping", cfg.max_grad_norm, "--max_grad_norm", "gradient_clipping")

    opt = ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    sched = ds.setdefault("scheduler",
                          {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0, "warmup_type": "linear"}})
    _check_types(opt, sched)
    _check_zero(ds.get("zero_optimization", {}))
    params = opt.setdefault("params", {})
    settle(params, "lr", cfg.learning_rate, "--learning_rate", "optimizer.params.lr")
    settle(params, "betas", [cfg.adam_beta1, cfg.adam_beta2], "--adam_beta1/--adam_beta2", "optimizer.params.betas")
    settle(params, "eps", cfg.adam_epsilon, "--adam_epsilon", "optimizer.params.eps")
    settle(params, "weight_decay", cfg.weight_decay, "--weight_decay", "optimizer.params.weight_decay")
    note = _settle_adam(ds, device_type)
    if note is not None and notes is not None:
        notes.append(note)

    sp = sched.setdefault("params", {})
    if sched.get("type") in ("WarmupDecayLR", "WarmupLR"):
        settle(sp, "warmup_max_lr", cfg.learning_rate, "--learning_rate", "scheduler.params.warmup_max_lr")
        # DeepSpeed's warmup schedules need >= 1 warmup step (and take at least 2): 0 means the shortest.
        settle(sp, "warmup_num_steps", max(1, cfg.warmup_steps), "--warmup_steps", "scheduler.params.warmup_num_steps")
    if sched.get("type") == "WarmupDecayLR":
        settle(sp, "total_num_steps", cfg.max_steps, "--max_steps", "scheduler.params.total_num_steps")

    # ZeRO-3 bucket sizes sized to the student's width, as the Hugging Face integration does.
    zero, h = ds.get("zero_optimization", {}), cfg.student_hidden_size
    for key, value in (("reduce_bucket_size", h * h), ("stage3_prefetch_bucket_size", int(0.9 * h * h)),
                       ("stage3_param_persistence_threshold", 10 * h)):
        if zero.get(key) == "auto":
            zero[key] = value

    precision = _settle_precision(cfg, ds, device_type, bf16_supported, problems)
    if problems:
        raise ConfigError("the run config and the DeepSpeed JSON disagree:\n  - " + "\n  - ".join(problems)
                          + "\nset the JSON value to \"auto\" (filled from the flags) or make the two equal")
    return ds, precision


# --------------------------------------------------------------------------- DeepSpeed's FusedAdam
TORCH_FUSED_ADAMW = "torch.optim.AdamW(fused=True)"


def _settle_adam(ds: dict[str, Any], device_type: str) -> str | None:
    """Which Adam DeepSpeed builds: torch's on CPU; on CUDA its FusedAdam, a CUDA extension built on first use
    (see `fused_adam_problem`), unless it cannot be built here: then torch's fused AdamW (`torch_adam`, plus
    `fused`, which DeepSpeed passes on to torch.optim.AdamW), and the line saying so is returned.

    A `torch_adam` the JSON sets is kept; `false` with no buildable FusedAdam is refused (ConfigError). Nothing
    is probed where FusedAdam would not run: another optimizer type, or ZeRO-Offload (DeepSpeedCPUAdam).
    """
    opt = ds["optimizer"]
    params = opt["params"]
    if opt["type"].lower() not in ("adam", "adamw"):
        return None
    if device_type == "cpu":
        params["torch_adam"] = True  # DeepSpeed's FusedAdam is a CUDA kernel
        return None
    offload = (ds.get("zero_optimization") or {}).get("offload_optimizer") or {}
    if device_type != "cuda" or params.get("torch_adam") or offload.get("device") in ("cpu", "nvme"):
        return None
    problem = fused_adam_problem()
    if problem is None:
        return None
    if "torch_adam" in params:
        import torch

        raise ConfigError(
            f"the DeepSpeed JSON sets optimizer.params.torch_adam to false (DeepSpeed's FusedAdam), but FusedAdam "
            f"cannot be built here: {problem}. Either make it buildable (install the CUDA {torch.version.cuda} toolkit "
            f"with nvcc, ninja and a C++ compiler; or reinstall deepspeed with DS_BUILD_FUSED_ADAM=1 where they "
            f"are), or remove optimizer.params.torch_adam (or set it to true) to train with {TORCH_FUSED_ADAMW}")
    params["torch_adam"] = True
    if not params.get("foreach"):  # torch refuses fused together with foreach
        params.setdefault("fused", True)
    chosen = TORCH_FUSED_ADAMW if params.get("fused") else "torch.optim.AdamW"
    return (f"optimizer: DeepSpeed's FusedAdam cannot be built here: {problem}; training with {chosen} "
            f"(set optimizer.params.torch_adam in the DeepSpeed JSON to choose)")


def fused_adam_problem() -> str | None:
    """Why DeepSpeed's FusedAdam can be neither loaded prebuilt nor built here; None when it can.

    Prebuilt (deepspeed installed with DS_BUILD_FUSED_ADAM=1) it loads as it is. Otherwise DeepSpeed builds it
    on first use (torch.utils.cpp_extension), which needs the CUDA toolkit's nvcc (CUDA_HOME, as torch finds
    it) of torch's CUDA major version, ninja, a C++ compiler ($CXX, else c++) and the Python headers. DeepSpeed
    and torch are imported here, never at module level.
    """
    import shutil
    import subprocess
    import sysconfig

    import torch
    import torch.utils.cpp_extension as cpp

    builder, prebuilt = _fused_adam_builder()
    if prebuilt:
        return None
    home = cpp.CUDA_HOME  # what torch found: $CUDA_HOME or $CUDA_PATH, else nvcc on PATH, else /usr/local/cuda
    nvcc = Path(home, "bin", "nvcc") if home else None
    if nvcc is None or not nvcc.is_file():
        where = f"CUDA_HOME {home} has no bin/nvcc" if home else "CUDA_HOME unset and no nvcc on PATH"
        return f"nvcc not found (no CUDA toolkit: {where})"
    try:
        release = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"{nvcc} does not run ({e})"
    found = re.search(r"release (\d+)\.(\d+)", release)
    wanted = torch.version.cuda
    if found and wanted and found.group(1) != wanted.split(".")[0]:
        return f"{nvcc} is CUDA {found.group(1)}.{found.group(2)} but torch was built with CUDA {wanted}"
    if shutil.which("ninja") is None:
        return "ninja not found (pip install ninja)"
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx} not found: install g++)"
    scheme = sysconfig.get_default_scheme()  # Debian's posix_local points at /usr/local: its headers are not there
    include = sysconfig.get_paths(scheme="posix_prefix" if scheme == "posix_local" else scheme)["include"]
    if not Path(include, "Python.h").is_file():
        return "the Python headers are missing (Python.h: install python3-dev)"
    if not builder.is_compatible(verbose=False):
        return f"DeepSpeed finds FusedAdam incompatible here ({builder.error_log or 'no reason given'})"
    return None


def _fused_adam_builder():
    """DeepSpeed's FusedAdam op builder (the current accelerator's), and whether the op was prebuilt at install."""
    from deepspeed.git_version_info import installed_ops
    from deepspeed.ops.op_builder import FusedAdamBuilder

    builder = FusedAdamBuilder()
    prebuilt = bool(installed_ops.get(builder.name)) and importlib.util.find_spec(builder.absolute_name()) is not None
    return builder, prebuilt


# The DeepSpeed optimizers whose params the flags fill (lr, betas, eps, weight_decay; DeepSpeed ignores the case),
# and DeepSpeed's schedulers (case matters); a type outside these fails inside deepspeed.initialize otherwise.
KNOWN_OPTIMIZERS = ("Adam", "AdamW", "Lamb")
KNOWN_SCHEDULERS = ("WarmupDecayLR", "WarmupLR", "WarmupCosineLR", "OneCycle", "LRRangeTest")


def _check_zero(zero: Any) -> None:
    """The DeepSpeed JSON's zero_optimization section is one DeepSpeed takes: checked before any model is built,
    not when the engine is made after the run's files are written."""
    if not isinstance(zero, dict):
        raise ConfigError(f"the DeepSpeed JSON's zero_optimization is {zero!r}, not an object: write "
                          '"zero_optimization": {"stage": 1} (or 0, 2, 3), or leave it out')
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise ConfigError(f"the DeepSpeed JSON's zero_optimization.stage is {stage!r}: choose 0, 1, 2 or 3 "
                          "(see ds_configs/: zero2.json, zero3.json)")
    for key in ("offload_optimizer", "offload_param"):
        device = (zero.get(key) or {}).get("device", "none") if isinstance(zero.get(key) or {}, dict) else None
        if device not in ("none", "cpu", "nvme"):
            raise ConfigError(f"the DeepSpeed JSON's zero_optimization.{key} is {zero.get(key)!r}: give "
                              '{"device": "cpu"} (or "nvme" with "nvme_path", or "none")')
    if (zero.get("offload_param") or {}).get("device", "none") != "none" and stage != 3:
        raise ConfigError(f"the DeepSpeed JSON offloads parameters (zero_optimization.offload_param) at stage "
                          f"{stage}: parameter offload needs stage 3")


def _check_types(optimizer: Any, scheduler: Any) -> None:
    """The DeepSpeed JSON's optimizer and scheduler sections name a type this run can use."""
    for section, value, known, ok in (
            ("optimizer", optimizer, KNOWN_OPTIMIZERS, lambda t: t.lower() in {k.lower() for k in KNOWN_OPTIMIZERS}),
            ("scheduler", scheduler, KNOWN_SCHEDULERS, lambda t: t in KNOWN_SCHEDULERS)):
        kind = value.get("type") if isinstance(value, dict) else None
        if not (isinstance(kind, str) and ok(kind)):
            shown = f"{section}.type {kind!r}" if isinstance(value, dict) else f"{section} {value!r}"
            raise ConfigError(f"the DeepSpeed JSON's {shown} is not one this run knows: use one of "
                              f"{', '.join(known)} (or leave the section out: AdamW with WarmupDecayLR)")


def _settle_precision(cfg: DistillConfig, ds: dict[str, Any], device_type: str, bf16_supported: bool,
                      problems: list[str]) -> str:
    """The training precision from --precision and the JSON's bf16/fp16 sections, which must agree; sets both
    sections' "enabled" in `ds` and appends any disagreement to `problems`."""
    json_bf16 = ds.get("bf16", {}).get("enabled", False)
    json_fp16 = ds.get("fp16", {}).get("enabled", False)
    if json_bf16 is True and json_fp16 is True:
        problems.append("the DeepSpeed JSON enables both bf16 and fp16; enable one")
    json_precision = "bf16" if json_bf16 is True else "fp16" if json_fp16 is True else None
    if cfg.precision == "auto":
        if json_precision is not None:
            precision = json_precision
        elif "auto" in (json_bf16, json_fp16):
            precision = "fp32" if device_type == "cpu" else ("bf16" if bf16_supported else "fp16")
        else:
            precision = "fp32"
    else:
        precision = cfg.precision
        explicit = json_precision or ("fp32" if "auto" not in (json_bf16, json_fp16) else None)
        if explicit is not None and explicit != precision and ("bf16" in ds or "fp16" in ds):
            problems.append(f"the DeepSpeed JSON trains in {explicit} but --precision is {precision}")
    if precision == "bf16" and device_type == "cuda" and not bf16_supported:
        problems.append("bf16 is not supported by this GPU: use ds_configs/single_gpu_fp16.json or --precision fp16")
    if precision == "fp16" and device_type == "cpu":
        problems.append("fp16 training is not supported on CPU: use ds_configs/cpu.json (fp32)")
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": precision == "bf16"}
    ds["fp16"] = {**ds.get("fp16", {}), "enabled": precision == "fp16"}

    return precision


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(a)), abs(float(b)))
    return a == b
