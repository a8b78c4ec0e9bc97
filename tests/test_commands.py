"""`distill COMMAND`: every console script behind one entry point, the same parser and main."""
from __future__ import annotations

import re

import pytest
from helpers import REPO

from distill import commands


def test_every_console_script_is_a_command():
    text = (REPO / "setup.py").read_text(encoding="utf-8")
    scripts = dict(re.findall(r'"distill-([\w-]+) = ([\w.]+):main"', text))
    assert {name: module for name, (module, _, _) in commands.COMMANDS.items()} == scripts
    assert '"distill = distill.commands:main"' in text


@pytest.mark.parametrize("name", sorted(commands.COMMANDS))
def test_each_command_is_its_console_scripts_main(name, capsys):
    with pytest.raises(SystemExit) as done:
        commands.main([name, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_no_command_or_an_unknown_one(capsys):
    assert commands.main([]) == 2 and "commands:" in capsys.readouterr().out
    assert commands.main(["--help"]) == 0
    assert commands.main(["pretok"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'pretok' (did you mean pretokenize?)")


def test_a_command_runs_with_its_arguments(monkeypatch):
    seen = []
    monkeypatch.setattr("distill.inspect_shards.main", lambda argv: seen.append(argv) or 7)
    assert commands.main(["inspect", "shards/", "--verify"]) == 7 and seen == [["shards/", "--verify"]]
