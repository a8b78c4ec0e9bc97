"""Every script and console command starts and finds the installed package, from any folder.

Scripts are run as users run them (`python launch/distill.py`), in a fresh process whose working
directory is not the checkout, so a script that only works through a path edit, or one that a
file beside it hides the package from (launch/distill.py is named like the package), fails here.
"""
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, cpu_env

SCRIPTS = {
    "launch/distill.py": "--teacher",
    "launch/evaluate_glue.py": "--learning_rate",
    "launch/evaluate_embeddings.py": "--samples_per_label",
    "tools/pretokenize.py": "--tokenizer_name",
    "tools/inspect_shards.py": "--max_seq_length",
    "tools/export_student.py": "--output_dir",
    "tools/demo_table.py": "--devices",
}
COMMANDS = {
    "distill-train": "--teacher",
    "distill-pretokenize": "--tokenizer_name",
    "distill-inspect": "--max_seq_length",
    "distill-export": "--output_dir",
    "distill-evaluate": "--learning_rate",
    "distill-evaluate-embeddings": "--samples_per_label",
    "distill-demo-table": "--devices",
}


def _help(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*argv, "--help"], cwd=cwd, capture_output=True, text=True, timeout=300, env=cpu_env())


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_runs_from_any_folder(script, tmp_path):
    done = _help([sys.executable, str(REPO / script)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:") and SCRIPTS[script] in done.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_console_command_is_installed(command, tmp_path):
    path = Path(sys.executable).parent / command
    assert path.is_file(), f"{command} is not installed beside {sys.executable}: reinstall the package"
    done = _help([str(path)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {command}") and COMMANDS[command] in done.stdout


def test_scripts_are_thin():
    """Entry points parse arguments and call the package: a few dozen lines, no path edits but one."""
    for script in [*SCRIPTS, "tools/bench/distill_bench.py", "tools/bench/relation_bench.py",
                   "tools/bench/kernel_bench.py", "tools/bench/pretokenize_bench.py"]:
        text = (REPO / script).read_text()
        if script.startswith("launch/"):
            # the one allowed edit: dropping the script's own folder, where launch/distill.py shadows the package
            assert "sys.path.insert" not in text and "sys.path.append" not in text, script
        else:
            assert "sys.path" not in text, script
        if not script.startswith("tools/bench/"):
            assert len(text.splitlines()) <= 40, f"{script} is {len(text.splitlines())} lines"


def test_the_adapter_table_lists_every_supported_family():
    from distill.encoders import SUPPORTED_MODEL_TYPES

    readme = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    start = readme.index("## Supported teachers and students")
    table = readme[start:readme.index("\n## ", start + 1)]
    rows = [line for line in table.splitlines() if line.startswith("| `")][1:]  # after the header
    listed = {name for row in rows for name in row.split("|")[1].replace("`", "").replace(",", " ").split()}
    assert listed == set(SUPPORTED_MODEL_TYPES)
