"""The Python API of bertdistiller, running distill's DeepSpeed loop.

For users who come from bertdistiller, its quick start works unchanged but for the import:

    from distill import MiniLMTrainer, MiniLMTrainingArguments, create_student
    args = MiniLMTrainingArguments(teacher_layer=12, student_layer=6, student_hidden_size=384,
                                   num_relation_heads=48, output_dir="./output", max_steps=400_000, ...)
    teacher = AutoModel.from_pretrained("google-bert/bert-base-uncased")
    student = create_student("google-bert/bert-base-uncased", args, use_teacher_weights=True)
    MiniLMTrainer(args=args, teacher_model=teacher, model=student, train_dataset=ds,
                  data_collator=DataCollatorWithPadding(tokenizer)).train()
    student.save_pretrained("./distilled-model")
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from . import student as _student
from .config import DistillConfig
from .errors import ConfigError, ConfigTypeError
from .relations import checked_relations, relation_name

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class MiniLMTrainingArguments(TrainingArguments):
    """transformers.TrainingArguments plus the MiniLMv2 settings (bertdistiller's names)."""

    teacher_layer: int = field(default=12, metadata={"help": "1-based teacher layer whose Q/K/V are distilled"})
    student_layer: int = field(default=6, metadata={"help": "number of student layers"})
    student_hidden_size: int = field(default=384, metadata={"help": "student width"})
    student_attention_heads: int | None = field(default=None,
                                                metadata={"help": "student heads (default: width / 64, at least 1)"})
    num_relation_heads: int = field(default=48, metadata={"help": "relation heads"})
    relations: dict = field(default_factory=lambda: {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0},
                            metadata={"help": "{(m, n): weight}, 1=query 2=key 3=value, or text as on the command "
                                              "line: 'qq:1,kk:1,vv:1'"})
    max_seq_len: int = field(default=512, metadata={"help": "only checked against the teacher's position embeddings"})
    relation_impl: str = field(default="auto", metadata={"help": "relation loss: auto, chunked, reference, triton"})
    relation_chunk_size: int = field(default=128,
                                     metadata={"help": "query rows per chunk of the relation loss (0: unchunked)"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "start afresh in an output_dir that holds another run, removing only distill's files there "
                "(otherwise such a directory is refused: resume with resume_from_checkpoint='auto')"})

    def __post_init__(self):
        super().__post_init__()
        # the text form, as the command line takes it, or a mapping: checked here, a plain dict afterwards
        self.relations = checked_relations(self.relations)
        if self.student_attention_heads is None:
            self.student_attention_heads = max(1, self.student_hidden_size // 64)

    def to_distill_config(self, teacher: str, num_samples: int | None = None) -> DistillConfig:
        """The equivalent DistillConfig (what launch/distill.py would take as flags)."""
        max_steps = self.max_steps
        if max_steps is None or max_steps <= 0:
            if not num_samples:
                raise ConfigError("set max_steps, or num_train_epochs with a sized train_dataset")
            global_batch = self.per_device_train_batch_size * self.gradient_accumulation_steps * max(self.world_size, 1)
            max_steps = max(1, math.ceil(self.num_train_epochs * num_samples / global_batch))
        warmup = self.warmup_steps if self.warmup_steps else int(getattr(self, "warmup_ratio", 0.0) * max_steps)
        deepspeed = self.deepspeed if isinstance(self.deepspeed, str) else "auto"
        return DistillConfig(
            teacher=teacher, teacher_layer=self.teacher_layer, student_layer=self.student_layer,
            student_hidden_size=self.student_hidden_size, student_attention_heads=self.student_attention_heads,
            num_relation_heads=self.num_relation_heads,
            relations=",".join(f"{relation_name(k)}:{v}" for k, v in self.relations.items()),
            relation_impl=self.relation_impl, relation_chunk_size=self.relation_chunk_size,
            max_seq_len=self.max_seq_len,
            dataloader_num_workers=self.dataloader_num_workers,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps, learning_rate=self.learning_rate,
            weight_decay=self.weight_decay, adam_beta1=self.adam_beta1, adam_beta2=self.adam_beta2,
            adam_epsilon=self.adam_epsilon, warmup_steps=min(int(warmup), max_steps), max_steps=max_steps,
            max_grad_norm=self.max_grad_norm or 0.0,
            precision="bf16" if self.bf16 else "fp16" if self.fp16 else "auto",
            output_dir=self.output_dir, logging_steps=max(1, int(self.logging_steps)),
            save_steps=int(self.save_steps) if self.save_strategy != "no" else 0,
            save_total_limit=self.save_total_limit, seed=self.seed, deepspeed_config=deepspeed,
            resume=self.resume_from_checkpoint, overwrite_output_dir=self.overwrite_output_dir,
        )


def create_student(teacher_model_name_or_path, args: MiniLMTrainingArguments, use_teacher_weights: bool = False,
                   cache_dir: str | None = None):
    """bertdistiller's signature over distill.student.create_student."""
    teacher = teacher_model_name_or_path
    if isinstance(teacher, str):
        from transformers import AutoModel

        from .paths import model_load_error, resolve_model_source

        source = resolve_model_source(teacher, "teacher")
        try:
            teacher = AutoModel.from_pretrained(source, cache_dir=cache_dir)
        except OSError as e:  # a hub name not found or not reachable, a directory without the weights
            raise model_load_error("teacher", source, e) from e
    return _student.create_student(teacher, args.student_layer, args.student_hidden_size, args.student_attention_heads,
                                   init="teacher" if use_teacher_weights else "random")


def _keep_model_inputs(collator):
    """Drop columns the models don't take (text, labels), as the HF Trainer does."""

    def collate(features: list[dict[str, Any]]):
        features = [{k: v for k, v in f.items() if k in MODEL_INPUTS} for f in features]
        if collator is not None:
            return collator(features)
        return {k: torch.stack([torch.as_tensor(f[k]) for f in features]) for k in features[0]}

    return collate


def _rows(dataset, count: int) -> list:
    """The first `count` rows of a map-style dataset (none of an iterable one: it would be consumed)."""
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        return []
    return [dataset[i] for i in range(min(count, len(dataset)))]


def check_trainer_inputs(args, teacher_model, model, train_dataset, data_collator, tokenizer) -> None:
    """ConfigTypeError (a TypeError), before anything runs, for what MiniLMTrainer cannot train on; the message names
    the fix."""
    from torch import nn

    if not isinstance(args, MiniLMTrainingArguments):
        raise ConfigTypeError(f"args must be MiniLMTrainingArguments, not {type(args).__name__}")
    if not isinstance(teacher_model, nn.Module):
        raise ConfigTypeError(f"teacher_model must be a model, e.g. AutoModel.from_pretrained(\"google-bert/bert-base-"
                              f"uncased\"), not {type(teacher_model).__name__}")
    if model is not None and not isinstance(model, nn.Module):
        raise ConfigTypeError(f"model must be the student model (distill.create_student(...)) or None to create one "
                              f"from args, not {type(model).__name__}")
    if isinstance(train_dataset, (str, bytes, os.PathLike)):
        raise ConfigTypeError(f"train_dataset is a {type(train_dataset).__name__} ({str(train_dataset)[:80]!r}), "
                              "not a dataset: tokenize the texts first (datasets.Dataset.map with the teacher's "
                              "tokenizer), or pretokenize them into shards and train with launch/distill.py --data")
    if not hasattr(train_dataset, "__iter__"):
        raise ConfigTypeError(f"train_dataset must be a dataset of tokenized rows, not {type(train_dataset).__name__}")
    rows = _rows(train_dataset, 2)
    for row in rows:
        if not isinstance(row, Mapping) or "input_ids" not in row:
            what = sorted(row)[:6] if isinstance(row, Mapping) else type(row).__name__
            raise ConfigTypeError(f"train_dataset's rows hold {what}, not input_ids: tokenize them first, e.g. "
                                  "dataset.map(lambda b: tokenizer(b[\"text\"], truncation=True), batched=True)")
    lengths = {len(row["input_ids"]) for row in rows}
    if data_collator is None and tokenizer is None and len(lengths) > 1:
        raise ConfigTypeError(f"train_dataset's rows differ in length ({' and '.join(map(str, sorted(lengths)))} "
                              "tokens) and nothing pads them: pass data_collator=DataCollatorWithPadding(tokenizer) "
                              "(or processing_class=tokenizer)")


class MiniLMTrainer:
    """bertdistiller's MiniLMTrainer: `.train()` runs distill's DeepSpeed loop in this process."""

    def __init__(self, *, args: MiniLMTrainingArguments, teacher_model, model, train_dataset,
                 eval_dataset=None, data_collator=None, tokenizer=None, processing_class=None):
        check_trainer_inputs(args, teacher_model, model, train_dataset, data_collator, processing_class or tokenizer)
        if data_collator is None and hasattr(processing_class or tokenizer, "pad"):
            from transformers import DataCollatorWithPadding

            data_collator = DataCollatorWithPadding(processing_class or tokenizer)  # as transformers' Trainer does
        self.args = args
        self.teacher_model = teacher_model
        self.model = model
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset  # accepted for compatibility; MiniLMv2 pre-training has no eval loop
        self.data_collator = data_collator
        self.tokenizer = processing_class or tokenizer

    def train(self):
        from .trainer import train

        teacher_name = getattr(self.teacher_model.config, "name_or_path", "") or "teacher"
        num_samples = len(self.train_dataset) if hasattr(self.train_dataset, "__len__") else None
        cfg = self.args.to_distill_config(teacher_name, num_samples)
        tokenizer = self.tokenizer or getattr(self.data_collator, "tokenizer", None) or teacher_name
        export_dir = train(cfg, teacher=self.teacher_model, student=self.model, dataset=self.train_dataset,
                           collate_fn=_keep_model_inputs(self.data_collator), tokenizer=tokenizer)
        # The caller's `model` ends in float32 with the trained weights, as after a HF Trainer run.
        from transformers import AutoModel

        trained = AutoModel.from_pretrained(export_dir)
        self.model.to(torch.float32).load_state_dict(trained.state_dict(), strict=False)
        self.export_dir = export_dir
        return export_dir


__all__ = ["MiniLMTrainingArguments", "MiniLMTrainer", "create_student"]
