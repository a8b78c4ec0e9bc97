"""tools/fetch_offline_assets.sh as the README documents it: `bash tools/fetch_offline_assets.sh [DIR]`, no PYTHON.

Every download is marked done here, so nothing is fetched: only the local corpus step runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

SCRIPT = REPO / "tools" / "fetch_offline_assets.sh"


def _assets_without_the_corpus(root):
    """The downloads marked done (nothing fetched), the review texts corpus still to build (it needs pyarrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for marker in ("teacher/.done", "reviews/.done", "corpus/sotu/.done", "corpus/brown/.done"):
        (root / marker).parent.mkdir(parents=True, exist_ok=True)
        (root / marker).touch()
    pq.write_table(pa.table({"Title": ["Nice", None], "Review Text": ["fits well", "too small"]}),
                   root / "reviews" / "reviews.parquet")
    return root


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    return {**env, **extra}


@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "python").exists(), reason="no .venv in this checkout")
def test_runs_as_documented_without_PYTHON(tmp_path):
    assets = _assets_without_the_corpus(tmp_path / "assets")
    proc = subprocess.run(["bash", str(SCRIPT), str(assets)], cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = (assets / "corpus" / "reviews.jsonl").read_text().splitlines()
    assert [json.loads(x)["text"] for x in lines] == ["Nice fits well", "too small"]


def test_an_interpreter_without_what_it_needs_is_named(tmp_path):
    assets = _assets_without_the_corpus(tmp_path / "assets")
    bare = tmp_path / "bare-python"  # no site-packages: neither pyarrow nor pip
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -I -S \"$@\"\n")
    bare.chmod(0o755)
    proc = subprocess.run(["bash", str(SCRIPT), str(assets)], env=_env(PYTHON=str(bare)), capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {bare} cannot import pyarrow, needed to build the corpus; run")
    assert not (assets / "corpus" / "reviews.jsonl").exists()
    (assets / "teacher" / ".done").unlink()
    proc = subprocess.run(["bash", str(SCRIPT), str(assets)], env=_env(PYTHON=str(bare)), capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {bare} has no pip")
    proc = subprocess.run(["bash", str(SCRIPT), str(assets / "reviews" / "reviews.parquet")], env=_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "is a file, not a directory" in proc.stderr
