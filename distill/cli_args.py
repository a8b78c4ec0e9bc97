"""Command-line flags generated from a dataclass: one flag per field, named as the field, its help the field's doc.

    @dataclass
    class Options:
        model: str = option("model directory", positional=True)
        epochs: "float | list[float]" = option("grid: epochs", default_factory=lambda: [3.0])
        precision: str = option("mixed precision", default="fp32", choices=("fp32", "bf16"))
        log: object = option("Python callers only", default=None, flag=False)

    parser = add_arguments(argparse.ArgumentParser(), Options)
    options = Options(**vars(parser.parse_args()))

The flag's form comes from the field's annotation (`None` in a union is ignored):
- `bool`: a switch, `--x` (store_true) when the default is False, `--x / --no-x` when it is True;
- a `list[T]` (alone or in a union, e.g. `float | list[float]`): `nargs="+"` of T, positional fields too;
- otherwise the first of str, int, float in the annotation (str when it is there: the dataclass's
  `__post_init__` turns the text into its own types and reports mistakes in its own words).
`option(..., type=..., choices=..., group=..., metavar=...)` overrides or adds to that. A field
without a default is a required flag. With `suppress_defaults=True` an absent flag leaves no
attribute (defaults, then a config file, then the flags), the help shows the default, and optional
fields take "none" / "null" for None.

Every flag has two spellings, `--flag_name` (the one `--help` names first) and `--flag-name`;
a switch's negative form is `--no-flag_name` / `--no-flag-name` (a prefix that only spellings of
one flag begin with still names it, as argparse's unique prefixes do). One idea has one name across
every command (`--max_seq_length`, `--output_dir`, ...): `option(..., deprecated=("old_name",))`
keeps a field's former names working, in both spellings, each use printing one line on stderr,
`note: --old_name is deprecated, use --flag_name`; they are left out of `--help`. A field that
keeps an older name for Python callers and config files is offered under the canonical name
listed in FLAG_NAMES, its own name then being a deprecated spelling (`flag(name)` gives the one to
name in messages).

Any number may follow a flag, negative ones included (`--learning_rate -1e-3`, `--x -inf`): plain
argparse takes only `-1` and `-.5` as values and reads `-1e-3` as an unknown option (`NUMBER`).

Values that do not come from the command line (a JSON config file, Python) are checked by
`field_value` against the field's annotation, with one rule for every field: the value must
already have the field's type (see there); text is never read as a number.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import numbers
import re
import sys
import types
import typing
from typing import Any, Callable

__all__ = ["option", "add_arguments", "field_value", "flag", "spellings", "FLAG_NAMES", "NUMBER"]

_SCALARS = (str, int, float)

# Every float-looking word: argparse's own pattern for "a negative number, not an option" knows only -1 and -.5.
# No flag of a generated parser looks like a number, so these words are always values.
NUMBER = re.compile(r"^-(?:(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|inf|infinity|nan)$", re.IGNORECASE)

# Fields whose name predates the one-name-per-idea rule, kept for Python callers and config files (the training
# config's max_seq_len): the flag is the canonical name on the right, the field's own name a deprecated spelling.
FLAG_NAMES = {"max_seq_len": "max_seq_length"}


def flag(name: str) -> str:
    """The flag that sets field `name`, as messages should name it: `--max_seq_length` for max_seq_len."""
    return f"--{FLAG_NAMES.get(name, name)}"


def spellings(name: str) -> list[str]:
    """`--name` and, where it has an underscore, `--name-with-dashes`: the option strings of one flag."""
    dashed = name.replace("_", "-")
    return [f"--{name}"] + ([f"--{dashed}"] if dashed != name else [])


def option(doc: str, *, default: Any = dataclasses.MISSING, default_factory: Callable[[], Any] | Any =
           dataclasses.MISSING, positional: bool = False, flag: bool = True, group: str | None = None,
           choices: typing.Sequence | None = None, type: Callable[[str], Any] | None = None,
           metavar: str | None = None, deprecated: typing.Sequence[str] = ()) -> Any:
    """A dataclass field documented by `doc` (its --help line), with how it appears on the command line.

    positional: an argument without dashes (the field must have no default); flag=False: not on the
    command line at all (Python callers only); group: the help section it is listed under; metavar:
    the value's name in --help; deprecated: former names of the flag, still taken, with a note.
    """
    meta = {"doc": doc, "positional": positional, "flag": flag, "group": group, "choices": choices, "type": type,
            "metavar": metavar, "deprecated": tuple(deprecated)}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def add_arguments(parser: argparse.ArgumentParser, cls: type, *,
                  suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """Add one argument per field of dataclass `cls` (in field order) to `parser`; return `parser`."""
    parser._negative_number_matcher = NUMBER  # argparse's hook (CPython 3.8-3.13): which "-..." words are values
    parser.formatter_class = _one_metavar(parser.formatter_class)
    if not isinstance(parser._get_option_tuples, _OneActionPerPrefix):
        parser._get_option_tuples = _OneActionPerPrefix(parser._get_option_tuples)
    hints = _hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "doc" not in meta or not meta.get("flag", True):
            continue
        target = parser
        if meta.get("group"):
            target = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        if meta.get("positional"):
            listed = next((m for m in _members(hints[f.name]) if typing.get_origin(m) in (list, tuple)), None)
            item = typing.get_args(listed)[0] if listed is not None else hints[f.name]
            target.add_argument(f.name, help=meta["doc"], type=meta.get("type") or _scalar(item),
                                **({"nargs": "+"} if listed is not None else {}),
                                **({"metavar": meta["metavar"]} if meta.get("metavar") else {}))
            continue
        name = FLAG_NAMES.get(f.name, f.name)
        kwargs = _flag_kwargs(f, hints[f.name], suppress_defaults)
        if name != f.name and kwargs.get("action") is None:
            kwargs.setdefault("metavar", name.upper())
        kwargs["action"] = _noting(parser._registry_get("action", kwargs.get("action"), kwargs.get("action")))
        action = target.add_argument(*spellings(name), dest=f.name, **kwargs)
        _add_deprecated(target, action, name, [*meta.get("deprecated", ()), *([f.name] if name != f.name else [])])
    return parser


class _OneActionPerPrefix:
    """argparse's matching of a flag's unique prefix (`--verif` for --verify_data), where a prefix that several
    spellings of one flag begin with (--verify_data, --verify-data) names that flag instead of being ambiguous."""

    def __init__(self, get_option_tuples: Callable[[str], list]):
        self.get_option_tuples = get_option_tuples

    def __call__(self, option_string: str) -> list:
        unique: dict[int, tuple] = {}
        for match in self.get_option_tuples(option_string):  # (action, option string, ...): the first spelling kept
            unique.setdefault(id(match[0]), match)
        return list(unique.values())


@functools.lru_cache(maxsize=None)
def _one_metavar(formatter: type) -> type:
    """`formatter` listing a flag's spellings with its value once, `--a_b, --a-b N` (as Python 3.13 does)."""
    if issubclass(formatter, _OneMetavar):
        return formatter
    return type(formatter.__name__, (_OneMetavar, formatter), {})


class _OneMetavar(argparse.HelpFormatter):
    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        value = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {value}"


@functools.lru_cache(maxsize=None)
def _noting(base: type) -> type:
    """`base` (an argparse action class) that prints a note when given under a deprecated spelling."""
    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.deprecated:
            print(f"note: {option_string} is deprecated, use {self.deprecated[option_string]}", file=sys.stderr)
            option_string = self.deprecated[option_string]  # what the action knows (a switch reads its --no-)
        base.__call__(self, parser, namespace, values, option_string)

    return type(base.__name__, (base,), {"deprecated": {}, "__call__": __call__})


def _add_deprecated(target, action: argparse.Action, name: str, old_names: list[str]) -> None:
    """Take each of `old_names`, in both spellings (and a switch's --no- forms), as `action`; not in --help."""
    negative = isinstance(action, argparse.BooleanOptionalAction)
    renamed = {}
    for old in old_names:
        for spelling in spellings(old):
            renamed[spelling] = f"--{name}"
            if negative:
                renamed[f"--no-{spelling[2:]}"] = f"--no-{name}"
    for spelling in renamed:
        if spelling in target._option_string_actions:
            raise ValueError(f"{spelling}, a deprecated spelling of --{name}, is already a flag of its own")
        target._option_string_actions[spelling] = action  # argparse's table of option strings, shared by groups
    action.deprecated = renamed


def _flag_kwargs(f: dataclasses.Field, annotation, suppress_defaults: bool) -> dict[str, Any]:
    meta = f.metadata
    default = _default(f)
    kwargs: dict[str, Any] = {"help": meta["doc"], "default": default}
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        kwargs["required"] = True
    if meta.get("metavar"):
        kwargs["metavar"] = meta["metavar"]
    if suppress_defaults:
        kwargs.update(default=argparse.SUPPRESS, help=f"{meta['doc']} (default: {default})")
    members = _members(annotation)
    if members == [bool]:
        kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
        return kwargs
    listed = next((m for m in members if typing.get_origin(m) in (list, tuple)), None)
    if listed is not None:
        kwargs["nargs"] = "+"
    parse = meta.get("type") or _scalar(typing.get_args(listed)[0] if listed is not None else annotation)
    if suppress_defaults and type(None) in typing.get_args(annotation):
        parse = _none_or(parse)
    kwargs["type"] = parse
    if meta.get("choices") is not None:
        kwargs["choices"] = list(meta["choices"])
    return kwargs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _members(annotation) -> list:
    """The types of a union (without None), or [annotation]."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _scalar(annotation) -> type:
    members = _members(annotation)
    for kind in _SCALARS:
        if kind in members:
            return kind
    return str


def _none_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse`, except that "none" / "null" mean None (to unset an optional field a config file set)."""
    def parse_optional(text: str):
        return None if text.lower() in ("none", "null") else parse(text)

    parse_optional.__name__ = getattr(parse, "__name__", "value")  # argparse names it in "invalid ... value"
    return parse_optional


# --------------------------------------------------------------------------- values from files and Python
_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURALS = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_value(cls: type, name: str, value: Any, *, label: str, show: Callable[[Any], str] = repr,
                none: str = "None") -> Any:
    """`value` for field `name` of dataclass `cls`, as the field holds it, or TypeError naming it.

    For values that do not come from the command line (a JSON config file, Python); the rule is
    the same for every field: the value must already have the field's type. bool takes True /
    False only; int an integer (not a bool, not 3.0); float any int or float, returned as a float
    (not a bool, not text); str a string; list[T] a list of T; None only where the annotation
    allows None. The message is `{label}{show(value)} is not {what the field takes} ({its doc})`,
    `none` naming None in it (e.g. "null" for JSON).
    """
    annotation = _hints(cls)[name]
    if value is None and type(None) in typing.get_args(annotation):
        return None
    converted = _typed(annotation, value)
    if converted is _MISMATCH:
        kinds = [_kind(m) for m in _members(annotation)]
        if type(None) in typing.get_args(annotation):
            kinds.append(none)
        doc = next((f.metadata.get("doc") for f in dataclasses.fields(cls) if f.name == name), None)
        raise TypeError(f"{label}{show(value)} is not {' or '.join(kinds)}" + (f" ({doc})" if doc else ""))
    return converted


_MISMATCH = object()


def _typed(annotation, value) -> Any:
    """`value` as one of the annotation's member types holds it, or _MISMATCH."""
    for member in _members(annotation):
        origin = typing.get_origin(member)
        if origin in (list, tuple):
            if isinstance(value, (list, tuple)):
                item = typing.get_args(member)[0] if typing.get_args(member) else Any
                items = [_typed(item, v) for v in value]
                if all(v is not _MISMATCH for v in items):
                    return items
        elif member is Any or member is object:
            return value
        elif member is bool or isinstance(value, bool):
            if member is bool and isinstance(value, bool):
                return value
        elif member is int:
            if isinstance(value, numbers.Integral):
                return int(value)
        elif member is float:
            if isinstance(value, numbers.Real):
                return float(value)
        elif isinstance(member, type) and isinstance(value, member):
            return value
    return _MISMATCH


def _kind(member) -> str:
    if typing.get_origin(member) in (list, tuple):
        args = typing.get_args(member)
        return f"a list of {_PLURALS.get(args[0], 'values')}" if args else "a list"
    return _KINDS.get(member, getattr(member, "__name__", str(member)))


def flag_table(cls: type) -> str:
    """The Markdown table of a config dataclass's command-line arguments (docs/ embeds it; tools/flag_tables.py
    writes it and a test keeps the docs equal to it): each flag once, its default, its doc, its old names."""
    rows = ["| flag | default | what |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "doc" not in meta or not meta.get("flag", True):
            continue
        name = f.name.upper() if meta.get("positional") else flag(f.name)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = "(required)" if required else f"`{_shown(_default(f))}`"
        doc = meta["doc"].replace("|", "\\|")
        if meta.get("deprecated"):
            doc += " (formerly " + ", ".join(f"`--{old}`" for old in meta["deprecated"]) + ", deprecated)"
        rows.append(f"| `{name}` | {default} | {doc} |")
    return "\n".join(rows) + "\n"


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "(none)"
    return str(value)


FLAG_TABLE = re.compile(r"(<!-- flags: ([\w.]+) -->\n)(.*?)(<!-- /flags -->)", re.DOTALL)


def fill_flag_tables(text: str) -> str:
    """`text` (Markdown) with every `<!-- flags: module.Class -->` ... `<!-- /flags -->` block holding that config
    dataclass's `flag_table`."""
    import importlib

    def table(match: re.Match) -> str:
        module, _, name = match.group(2).rpartition(".")
        return match.group(1) + flag_table(getattr(importlib.import_module(module), name)) + match.group(4)

    return FLAG_TABLE.sub(table, text)
