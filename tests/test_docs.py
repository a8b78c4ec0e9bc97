"""The documentation stays true: the README is a short front door whose links resolve, and every flag table in
docs/ is the one its config dataclass generates (tools/flag_tables.py rewrites them)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import REPO, cpu_env

from distill.cli_args import FLAG_TABLE, fill_flag_tables, flag_table

PAGES = sorted((REPO / "docs").glob("*.md"))
CONFIGS = {"distill.config.DistillConfig", "distill.pretokenize.cli.PretokenizeConfig",
           "distill.inspect_shards.InspectConfig", "distill.export.ExportConfig",
           "distill.evaluation.config.EvaluationConfig", "distill.evaluation.cli.SummaryOptions",
           "distill.evaluation.embedding_eval.EmbeddingEvaluationConfig", "distill.evaluation.demo.DemoConfig"}


def test_the_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not target.startswith("http"):
            assert (REPO / target).is_file(), target
    for command in ("make demo", "make test", "deepspeed --num_gpus 8", "--hostfile", "wheelhouse", "make gpu-check"):
        assert command in readme, command


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_flag_table_is_the_generated_one(page):
    text = page.read_text(encoding="utf-8")
    assert fill_flag_tables(text) == text, f"run: python tools/flag_tables.py ({page.name} is stale)"


def test_every_commands_flags_are_documented_once():
    found = [m.group(2) for page in PAGES for m in FLAG_TABLE.finditer(page.read_text(encoding="utf-8"))]
    assert sorted(found) == sorted(CONFIGS)


def test_a_stale_table_is_found_and_rewritten(tmp_path):
    from distill.inspect_shards import InspectConfig

    stale = "intro\n<!-- flags: distill.inspect_shards.InspectConfig -->\n| flag |\n<!-- /flags -->\nend\n"
    assert fill_flag_tables(stale) == ("intro\n<!-- flags: distill.inspect_shards.InspectConfig -->\n"
                                       + flag_table(InspectConfig) + "<!-- /flags -->\nend\n")
    proc = subprocess.run([sys.executable, "tools/flag_tables.py", "--check"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=cpu_env())
    assert proc.returncode == 0 and proc.stdout.strip() == "stale: none", proc.stdout + proc.stderr
