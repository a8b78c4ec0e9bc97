"""Every command takes `--flag_name` and `--flag-name`; one canonical name per idea; old names still work, with a note.

Parse only: no command does any work here. The parsers are the ones the console scripts of setup.py run.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

import pytest
from helpers import REPO

from distill import config as train_config
from distill import export, inspect_shards
from distill.cli_args import add_arguments, option
from distill.evaluation import cli as evaluate_cli
from distill.evaluation import demo, embedding_eval
from distill.pretokenize import cli as pretokenize_cli

# console script (and subcommand) -> the parser it runs, and the arguments it requires (positionals, required flags)
PARSERS = {
    "distill-train": (train_config.build_parser, []),
    "distill-pretokenize": (lambda: pretokenize_cli.parser("distill-pretokenize"),
                            ["--tokenizer_name", "tok", "--output_dir", "out"]),
    "distill-inspect": (lambda: inspect_shards.parser("distill-inspect"), ["shards"]),
    "distill-export": (lambda: export.parser("distill-export"), ["run", "--output_dir", "out"]),
    "distill-evaluate": (lambda: evaluate_cli.run_parser("distill-evaluate"), ["model"]),
    "distill-evaluate summary": (lambda: evaluate_cli.summary_parser("distill-evaluate"), ["results"]),
    "distill-evaluate-embeddings": (lambda: embedding_eval.parser("distill-evaluate-embeddings"), ["model"]),
    "distill-demo-table": (lambda: demo.parser("distill-demo-table"), ["--student", "student"]),
}

# One name per idea (the canonical spelling) -> {command: the destination it sets there}. Sequence length:
# Hugging Face's run_glue and sentence-transformers say max_seq_length, and so did evaluation, embeddings and the
# demo; the training config's field keeps its name (config files, Python), its flag is --max_seq_length.
IDEAS = {
    "--max_seq_length": {"distill-train": "max_seq_len", "distill-inspect": "max_seq_length",
                         "distill-evaluate": "max_seq_length", "distill-evaluate-embeddings": "max_seq_length",
                         "distill-demo-table": "max_seq_length"},
    "--output_dir": {"distill-train": "output_dir", "distill-pretokenize": "output_dir", "distill-export": "output_dir",
                     "distill-evaluate": "output_dir", "distill-evaluate-embeddings": "output_dir",
                     "distill-demo-table": "output_dir"},
    "--precision": {"distill-train": "precision", "distill-evaluate": "precision"},
    "--tokenizer_name": {"distill-pretokenize": "tokenizer_name", "distill-evaluate": "tokenizer_name"},
    "--teacher": {"distill-train": "teacher", "distill-demo-table": "teacher"},
    "--devices": {"distill-evaluate": "devices", "distill-demo-table": "devices"},
    "--output_file": {"distill-evaluate summary": "output_file"},
}

# (command, old spelling) -> the canonical one; the old one in both spellings, each with a note
DEPRECATED = {
    ("distill-train", "--max_seq_len"): "--max_seq_length",
    ("distill-inspect", "--seq_len"): "--max_seq_length",
    ("distill-pretokenize", "--output"): "--output_dir",
    ("distill-pretokenize", "--tokenizer"): "--tokenizer_name",
    ("distill-export", "--out"): "--output_dir",
    ("distill-evaluate summary", "--output"): "--output_file",  # a file: --output is no longer a name of its own
}


def _value(action: argparse.Action) -> list[str]:
    """A value the flag takes (parsing only checks its form)."""
    if action.nargs == 0:
        return []
    return [str(list(action.choices)[-1])] if action.choices else ["2"]


def _flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]


def _parse(command: str, argv: list[str]) -> dict:
    make, required = PARSERS[command]
    return vars(make().parse_args([*required, *argv]))


def _dashed(spelling: str) -> str:
    return "--" + spelling[2:].replace("_", "-")


def _underscored(spelling: str) -> list[str]:
    """--x-y -> --x_y; for a switch's negative form also the one that keeps its "--no-" (--no-progress_bar)."""
    forms = ["--" + spelling[2:].replace("-", "_")]
    return forms + (["--no-" + spelling[5:].replace("-", "_")] if spelling.startswith("--no-") else [])


def test_every_console_script_is_checked_here():
    text = (REPO / "setup.py").read_text(encoding="utf-8")
    scripts = set(re.findall(r'"([\w-]+) = [\w.]+:main"', text)) - {"distill"}  # the dispatcher: test_commands.py
    assert scripts and scripts == {name.split()[0] for name in PARSERS}


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_flag_takes_both_spellings(command):
    make, _ = PARSERS[command]
    parser = make()
    for action in _flags(parser):
        if action.dest == "help":
            continue
        for spelling in action.option_strings:
            assert parser._option_string_actions.get(_dashed(spelling)) is action, f"{command}: {spelling}"
            assert action in [parser._option_string_actions.get(u) for u in _underscored(spelling)], \
                f"{command}: {spelling} has no spelling with underscores"
        underscored = action.option_strings[0]
        assert underscored in _underscored(underscored), f"{command}: the help's first spelling is {underscored}"
        parsed = _parse(command, [underscored, *_value(action)])
        assert parsed == _parse(command, [_dashed(underscored), *_value(action)]), (command, underscored)
        assert action.dest in parsed


@pytest.mark.parametrize("command, old", sorted(DEPRECATED))
def test_deprecated_spellings_still_work_with_a_note(command, old, capsys):
    new = DEPRECATED[command, old]
    action = PARSERS[command][0]()._option_string_actions[new]
    value = _value(action)
    wanted = _parse(command, [new, *value])
    assert capsys.readouterr().err == ""
    for spelling in (old, _dashed(old)):
        assert _parse(command, [spelling, *value]) == wanted
        assert capsys.readouterr().err == f"note: {spelling} is deprecated, use {new}\n"


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_deprecated_spelling_is_in_the_table(command):
    parser = PARSERS[command][0]()
    hidden = {s for s, a in parser._option_string_actions.items() if s not in a.option_strings}
    listed = {s for (c, old) in DEPRECATED if c == command for s in (old, _dashed(old))}
    assert hidden == listed
    help_text = parser.format_help()
    assert not [s for s in hidden if re.search(rf"{re.escape(s)}\b(?![-_])", help_text)], help_text


def test_one_name_per_idea_across_commands():
    others = {old for (_, old) in DEPRECATED}
    for canonical, commands in IDEAS.items():
        for command, dest in commands.items():
            parser = PARSERS[command][0]()
            action = parser._option_string_actions.get(canonical)
            assert action is not None and action.dest == dest, (command, canonical)
            both = list(dict.fromkeys([canonical, _dashed(canonical)]))
            assert action.option_strings[:len(both)] == both, action.option_strings
    for command, (make, _) in PARSERS.items():  # an old name is nowhere a flag of its own
        spelled = {s for a in _flags(make()) for s in a.option_strings}
        assert not spelled & (others | {_dashed(s) for s in others}), command


def test_help_shows_the_canonical_spelling_and_the_alias_once():
    text = inspect_shards.parser("distill-inspect").format_help()
    listed = [line for line in text.splitlines() if re.match(r"\s+--max", line)]
    assert len(listed) == 1 and re.match(r"\s+--max_seq_length, --max-seq-length N \[N \.\.\.\]", listed[0])
    assert "--seq-len" not in text and "--seq_len" not in text


def test_generated_flags_spelling_rules():
    @dataclass
    class Options:
        name: str = option("required: it has no default", metavar="NAME")
        batch_size: int = option("a size", default=1, deprecated=("bs",))
        progress_bar: bool = option("bars", default=True, deprecated=("progress",))
        max_seq_len: int = option("renamed: its flag is --max_seq_length", default=8)

    parser = add_arguments(argparse.ArgumentParser(), Options)
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --name is required
    parse = lambda *argv: Options(**vars(parser.parse_args(["--name", "n", *argv])))  # noqa: E731
    assert parse("--batch-size", "3") == parse("--batch_size", "3") == Options("n", batch_size=3)
    assert parse("--no-progress-bar") == parse("--no-progress_bar") == Options("n", progress_bar=False)
    assert parse("--max-seq-length", "4") == Options("n", max_seq_len=4)
    assert parse("--no-progress") == Options("n", progress_bar=False)
    assert parse("--max_seq_len", "5") == Options("n", max_seq_len=5)
    assert "NAME" in parser.format_help() and "--bs" not in parser.format_help()


def test_a_command_run_with_an_old_spelling_says_so(capsys):
    assert inspect_shards.main(["shards", "--seq-len", "2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "note: --seq-len is deprecated, use --max_seq_length"
    assert err[1].startswith("error: --max_seq_length 2 is too small") and len(err) == 2


def test_a_prefix_of_one_flag_stays_that_flag():
    """argparse takes unique prefixes (`--verif`); one that both spellings of a flag begin with still names it."""
    assert train_config.build_parser().parse_args(["--verif"]).verify_data is True
    assert _parse("distill-inspect", ["--max_s", "64"])["max_seq_length"] == [64]
    with pytest.raises(SystemExit):
        train_config.build_parser().parse_args(["--max"])  # --max_steps, --max_seq_length, ...: still ambiguous
