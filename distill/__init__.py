"""distill: MiniLMv2 relation distillation for BERT-family encoders, scaled with DeepSpeed.

The public names are imported lazily, so `import distill` stays cheap for the CPU tools.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "DistillConfig": "config", "ConfigError": "errors", "DistillError": "errors", "DivergedError": "errors",
    "MiniLMTrainingArguments": "api", "MiniLMTrainer": "api", "create_student": "api",
    "FrozenTeacher": "teacher", "MiniLMv2Objective": "objective",
    "relation_loss": "relations", "parse_relations": "relations", "RelationSpec": "relations",
    "ShardSet": "shards", "ShardError": "shards",
    "WindowDataset": "data", "WindowSampler": "data", "DataError": "data",
    "get_adapter": "encoders", "train": "trainer",
    "evaluate": "evaluation", "create_summary_table": "evaluation",
}

__all__ = ["__version__", *_EXPORTS]


def lazy_getattr(package: str, exports: dict[str, str]):
    """A module `__getattr__` (PEP 562) that imports `package.<module>` the first time one of its
    `exports` ({name: module}) is used, and caches the value in the package."""
    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import importlib
        import sys

        value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


__getattr__ = lazy_getattr(__name__, _EXPORTS)
