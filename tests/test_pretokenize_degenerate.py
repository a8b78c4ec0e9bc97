"""distill.pretokenize on degenerate inputs and stops: inputs without text, a file given twice, an
empty --output, and Ctrl-C (one line, exit 130, no traceback, no directory left when no shard was
finished, the finished shards kept otherwise)."""
from __future__ import annotations

import importlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, WORDS, cpu_env

import distill.pretokenize as P

P_build = importlib.import_module("distill.pretokenize.build")  # the module: the package's `build` is the function
P_encoding = importlib.import_module("distill.pretokenize.encoding")

ENV = cpu_env(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def corpus(path: Path, docs: int, seed: int = 0, words: int = 60) -> Path:
    rng = random.Random(seed)
    path.write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, words)))
                                for _ in range(docs)), encoding="utf-8")
    return path


def cli(tok_dir, inputs, out, *extra) -> list[str]:
    return ["--tokenizer_name", str(tok_dir), "--input", *map(str, inputs), "--output_dir", str(out),
            "--num-workers", "1", "--no-progress", *extra]


def build(tok_dir, inputs, out, **kw):
    return P.build(tokenizer=str(tok_dir), inputs=[str(i) for i in inputs], output=str(out), show_progress=False,
                   log=lambda m: None, command=["test"], num_workers=1, **kw)


# --------------------------------------------------------------------------- inputs without text
def test_inputs_without_text_are_refused_naming_them(tmp_path, tiny_tokenizer_dir, capsys):
    (tmp_path / "empties.jsonl").write_text('{"text": ""}\n{"text": "   "}\n', encoding="utf-8")
    (tmp_path / "blank.txt").write_text("\n\n   \n\t\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_bytes(b"")
    cases = {
        ("empties.jsonl",): "no text in {0}: all 2 documents of the inputs are empty, whitespace-only or produce no "
                            "tokens",
        ("blank.txt", "empty.txt"): "no text in {0}, {1}: the inputs hold no documents",
        ("empty.txt",): "no text in {0}: the files are empty",
    }
    for names, message in cases.items():
        paths = [str(tmp_path / n) for n in names]
        out = tmp_path / f"out-{'-'.join(names)}"
        assert P.main(cli(tiny_tokenizer_dir, paths, out)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: " + message.format(*paths)), err
        assert not out.exists()


# --------------------------------------------------------------------------- a file given twice
def test_a_file_read_twice_is_refused_naming_it(tmp_path, tiny_tokenizer_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir").mkdir()
    a = corpus(tmp_path / "dir" / "a.txt", 5)
    corpus(tmp_path / "dir" / "b.txt", 5, seed=1)
    cases = [
        ([a, a], f"input file '{a}' would be read twice (--input '{a}' given twice); give each file once"),
        ([a, "dir/a.txt"], f"input file 'dir/a.txt' would be read twice (--input '{a}' and 'dir/a.txt')"),
        (["dir", a], f"input file '{a}' would be read twice (--input 'dir' and '{a}')"),
    ]
    for inputs, message in cases:
        with pytest.raises(P.PretokenizeError) as e:
            build(tiny_tokenizer_dir, inputs, tmp_path / "out")
        assert str(e.value).startswith(message), str(e.value)
        assert not (tmp_path / "out").exists()
    assert P.main(cli(tiny_tokenizer_dir, [a, a], tmp_path / "out")) == 2
    assert "would be read twice" in capsys.readouterr().err


# --------------------------------------------------------------------------- an empty --output
@pytest.mark.parametrize("output", ["", "  "])
def test_an_empty_output_is_refused(tmp_path, tiny_tokenizer_dir, capsys, monkeypatch, output):
    monkeypatch.chdir(tmp_path)
    a = corpus(tmp_path / "a.txt", 5)
    assert P.main(cli(tiny_tokenizer_dir, [a], output)) == 2
    assert capsys.readouterr().err.startswith("error: --output_dir is empty: give the directory to write the shards in")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # nothing written in the working directory


# --------------------------------------------------------------------------- Ctrl-C
def interrupt_at_batch(monkeypatch, n: int) -> None:
    """Make the n-th encoded batch (1-based) and every later one raise KeyboardInterrupt, as a Ctrl-C while
    tokenizing."""
    real = P_encoding.BatchEncoder.__call__
    calls = []

    def encode(self, texts):
        calls.append(1)
        if len(calls) >= n:
            raise KeyboardInterrupt
        return real(self, texts)

    monkeypatch.setattr(P_encoding.BatchEncoder, "__call__", encode)


def test_ctrl_c_before_a_shard_is_finished_leaves_nothing(tmp_path, tiny_tokenizer_dir, capsys, monkeypatch):
    a = corpus(tmp_path / "a.txt", 200)
    out = tmp_path / "out"
    interrupt_at_batch(monkeypatch, 1)
    assert P.main(cli(tiny_tokenizer_dir, [a], out)) == 130
    captured = capsys.readouterr()
    assert captured.err == f"interrupted: nothing written to {out}\n" and captured.out == ""
    assert not out.exists()
    (tmp_path / "mine").mkdir()  # the user's directory: stays, empty
    assert P.main(cli(tiny_tokenizer_dir, [a], tmp_path / "mine")) == 130
    assert capsys.readouterr().err == f"interrupted: nothing written to {tmp_path / 'mine'}\n"
    assert list((tmp_path / "mine").iterdir()) == []


def test_ctrl_c_while_preparing_leaves_nothing(tmp_path, tiny_tokenizer_dir, capsys, monkeypatch):
    a = corpus(tmp_path / "a.txt", 20)
    out = tmp_path / "out"

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(P_build, "Tokenization", stop)  # after the progress file is written, before tokenizing
    assert P.main(cli(tiny_tokenizer_dir, [a], out)) == 130
    assert capsys.readouterr().err == f"interrupted: nothing written to {out}\n"
    assert not out.exists()


def test_ctrl_c_after_finished_shards_keeps_them_and_resumes(tmp_path, tiny_tokenizer_dir, capsys, monkeypatch):
    a = corpus(tmp_path / "a.txt", 400)
    args = ["--shard-tokens", "500", "--batch-chars", "2000"]
    reference = tmp_path / "reference"
    assert P.main(cli(tiny_tokenizer_dir, [a], reference, *args)) == 0
    out = tmp_path / "out"
    interrupt_at_batch(monkeypatch, 6)
    assert P.main(cli(tiny_tokenizer_dir, [a], out, *args)) == 130
    err = capsys.readouterr().err
    kept = len(json.loads((out / P.PROGRESS_NAME).read_text())["shards"])
    assert kept >= 2 and err == (f"interrupted: the {kept} finished shards in {out} are kept; re-run the same "
                                 "command to resume\n")
    monkeypatch.undo()
    assert P.main(cli(tiny_tokenizer_dir, [a], out, *args)) == 0
    assert {p.name: p.read_bytes() for p in out.glob("shard-*")} == \
        {p.name: p.read_bytes() for p in reference.glob("shard-*")}


@pytest.mark.slow
def test_sigint_to_the_process_group_stops_it_in_one_line(tmp_path, tiny_tokenizer_dir):
    """A real Ctrl-C reaches the CLI and its worker processes (its process group) while they start."""
    a = corpus(tmp_path / "a.txt", 10000, words=80)  # ~2 MB: the workers take longer than that to start
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "tools/pretokenize.py", *cli(tiny_tokenizer_dir, [a], out)[:-3],
                             "--num-workers", "2", "--shard-tokens", "100000000", "--no-progress"],
                            cwd=REPO, env=ENV, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not (out / P.PROGRESS_NAME).exists():  # the output prepared: the workers are starting
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "pretokenize did not start in time"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr == f"interrupted: nothing written to {out}\n" and stdout == ""
    assert not out.exists(), list(out.iterdir())
