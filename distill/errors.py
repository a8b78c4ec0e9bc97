"""Every error a user can fix, in one hierarchy; every command catches `DistillError` and nothing else.

    DistillError                       exit 2: bad input the user fixes; the message names the problem and the fix
    ├── ConfigError (ValueError)       flags, settings, paths, the models given, the DeepSpeed JSON
    │   ├── ConfigTypeError (TypeError)  a value of the wrong type given to the Python API (distill.api)
    │   ├── LockedError                another live process holds the output directory
    │   └── UnsupportedEncoder         a model family without an adapter (distill.encoders)
    ├── DataError (ValueError)         the training data cannot serve the run
    │   ├── ShardError                 a shard directory is missing, malformed or damaged
    │   └── TaskDataError              evaluation data: unknown task, missing file or column, bad label
    ├── PretokenizeError               pretokenization's inputs, tokenizer or output directory
    ├── CheckpointError (ValueError)   a checkpoint cannot be written or read (a full disk included)
    ├── ExportError (ValueError)       a checkpoint cannot be exported to the directory asked for
    └── DivergedError (FloatingPointError)  exit 3: the loss or the weights went non-finite

A command prints `error: <message>` (one line on stderr) and exits with the error's `exit_code`.
Anything else that escapes a command is a bug in distill: Python prints its traceback, exit 1.
The builtin second bases keep `except ValueError` (etc.) in API users' code working. This module
imports only the standard library: the pretokenizer's worker processes import it.
"""
from __future__ import annotations

__all__ = ["DistillError", "ConfigError", "ConfigTypeError", "LockedError", "UnsupportedEncoder", "DataError",
           "ShardError", "TaskDataError", "PretokenizeError", "CheckpointError", "ExportError", "DivergedError"]


class DistillError(Exception):
    """A problem the user can fix (bad flags, files, data, models); the message says what and how."""

    exit_code = 2
    """The exit status of a command that stops on it."""


class ConfigError(DistillError, ValueError):
    """A run setting is invalid: a flag, a config file, a path, a model given; the message says how to fix it."""


class ConfigTypeError(ConfigError, TypeError):
    """A value of the wrong type given to the Python API (e.g. a dataset of text where token ids go)."""


class LockedError(ConfigError):
    """Another live process holds the directory (or it cannot be locked): the command exits 2."""


class UnsupportedEncoder(ConfigError):
    """A model whose `model_type` has no adapter; the message names it, the supported list and what it would take."""


class DataError(DistillError, ValueError):
    """The data cannot serve this run: the message says what is wrong and how to fix it."""


class ShardError(DataError):
    """A shard directory is missing, malformed, or does not match its manifest."""


class TaskDataError(DataError):
    """Bad task input: unknown task, missing file or column, label outside the task's set."""


class PretokenizeError(DistillError):
    """A problem with pretokenization's inputs, the tokenizer or the output directory, with its fix."""


class CheckpointError(DistillError, ValueError):
    """A checkpoint cannot be written or read; the message names the file and the last good checkpoint."""


class ExportError(DistillError, ValueError):
    """A checkpoint cannot be exported: the source is not a complete checkpoint of an exportable student, or the
    target directory cannot take the export."""


class DivergedError(DistillError, FloatingPointError):
    """The loss or the student's weights went non-finite and the run stopped without saving: the message says the
    run diverged, names the last good checkpoint and the fixes (a lower learning rate, bf16, the data)."""

    exit_code = 3
