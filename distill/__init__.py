"""distill: MiniLMv2 relation distillation for BERT-family encoders, scaled with DeepSpeed.

The public names are imported lazily, so `import distill` stays cheap for the CPU tools.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "DistillConfig": "config", "ConfigError": "config",
    "MiniLMTrainingArguments": "api", "MiniLMTrainer": "api", "create_student": "api",
    "FrozenTeacher": "teacher", "MiniLMv2Objective": "objective",
    "relation_loss": "relations", "parse_relations": "relations",
    "ShardSet": "shards", "ShardError": "shards",
    "WindowDataset": "data", "WindowSampler": "data", "DataError": "data",
    "get_adapter": "encoders", "train": "trainer",
    "evaluate": "evaluation", "create_summary_table": "evaluation",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
