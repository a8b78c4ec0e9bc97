"""distill.pretokenize (tools/pretokenize.py): every input format decodes back to the tokenizer's ids, shards close at
document boundaries, output is identical for any worker count, a SIGKILLed run resumes to the
same bytes, and bad inputs fail with a message that says what to do, losing nothing."""
from __future__ import annotations

import gzip
import importlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, WORDS, cpu_env
from unwritable import assert_unwritable_outputs_refused

import distill.pretokenize as P
from distill.io import file_sha256
from distill.pretokenize import inputs as P_inputs
from distill.shards import MANIFEST_NAME, ShardError, ShardSet, tokenizer_signature

ENV = cpu_env(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")


# --------------------------------------------------------------------------- helpers
def random_docs(n: int, seed: int = 0, max_words: int = 60) -> list[str]:
    rng = random.Random(seed)
    extras = ["Hello,", "World!", "naïve", "café", "(x)", "3.14", "don't", "ÜBER", "[SEP]", "a\tb"]
    docs = []
    for _ in range(n):
        words = [rng.choice(WORDS) if rng.random() < 0.9 else rng.choice(extras)
                 for _ in range(rng.randint(1, max_words))]
        if len(words) > 6 and rng.random() < 0.3:
            words.insert(len(words) // 2, "\n")  # a line break inside a document (not a blank line)
        docs.append(" ".join(words).replace(" \n ", "\n"))
    return docs


def txt_reference(text: str) -> list[str]:
    """The definition: a document is a block of non-blank lines, joined by "\\n"."""
    docs, block = [], []
    for line in text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line.strip():
            block.append(line)
        elif block:
            docs.append("\n".join(block))
            block = []
    if block:
        docs.append("\n".join(block))
    return docs


def load_tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def reference_ids(tok, docs: list[str]) -> list[list[int]]:
    """Each non-empty document through the tokenizer itself: no special tokens added or matched."""
    out = []
    for d in docs:
        if d.strip():
            ids = tok(d, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            if ids:
                out.append(ids)
    return out


def build(tok_dir, inputs, out, **kw):
    kw.setdefault("num_workers", 1)
    kw.setdefault("shard_tokens", 500)
    return P.build(tokenizer=str(tok_dir), inputs=[str(i) for i in inputs], output=str(out), show_progress=False,
                   log=lambda msg: None, command=["test"], **kw)


def check_shards(out: Path, expected: list[list[int]], shard_tokens: int) -> dict:
    """Decodes to `expected`; each shard but the last closes at the first document boundary at or past shard_tokens."""
    shards = ShardSet(out, verify=True)
    sep = shards.tokenizer["sep_token_id"]
    assert [d.tolist() for d in shards.documents()] == expected
    m = shards.manifest
    assert m["total_documents"] == len(expected)
    assert m["total_tokens"] == sum(len(e) + 1 for e in expected) == shards.num_tokens
    for i, entry in enumerate(m["shards"]):
        arr = np.asarray(shards.shard(i))
        assert entry["sha256"] == file_sha256(out / entry["file"])
        assert arr.size == entry["num_tokens"] and arr[-1] == sep  # ends on a document boundary
        ends = np.flatnonzero(arr == sep)
        assert ends.size == entry["num_documents"]
        if i < len(m["shards"]) - 1:
            last_doc = ends[-1] - (ends[-2] if ends.size > 1 else -1)
            assert entry["num_tokens"] >= shard_tokens > entry["num_tokens"] - last_doc
    return m


def snapshot(directory: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------- reading
def test_txt_documents_are_blocks_between_blank_lines(tmp_path, monkeypatch):
    rng = random.Random(1)
    lines = ["the cat", "", "   ", "\t", "sat on  ", "  the mat", "x", "naïve café", "\u3000", "end."]
    text = "".join(rng.choice(lines) + rng.choice(["\n", "\r\n", "\n"]) for _ in range(3000)) + "tail  "
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    for block in (1, 7, 64, 1 << 22):  # blocks cut separators, CRLFs and UTF-8 sequences anywhere
        monkeypatch.setattr(P_inputs, "READ_BLOCK", block)
        got = list(P.DocumentReader(P.resolve_inputs([str(path)]), "text"))
        assert got == txt_reference(text), block


FORMATS = ["txt", "jsonl", "jsonl.gz", "parquet", "arrow-stream", "arrow-file", "save_to_disk", "datasetdict"]


def write_corpus(directory: Path, fmt: str, docs: list[str]) -> tuple[Path, dict]:
    """`docs` in format `fmt`; returns the --input path and extra build arguments."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    rows = [json.dumps({"id": i, "text": d}) for i, d in enumerate(docs)]
    if fmt == "txt":
        path = directory / "c.txt"
        path.write_text("\n\n".join(d for d in docs if d.strip()) + "\n", encoding="utf-8")
    elif fmt == "jsonl":
        path = directory / "c.jsonl"
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    elif fmt == "jsonl.gz":
        path = directory / "c.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write("\n".join(rows))  # no final newline
    elif fmt == "parquet":
        path = directory / "c.parquet"
        pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), path, row_group_size=17)
    elif fmt == "arrow-file":
        path = directory / "c.arrow"
        table = pa.table({"text": docs, "id": list(range(len(docs)))})
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            for batch in table.to_batches(max_chunksize=19):
                w.write_batch(batch)
    else:
        import datasets

        ds = datasets.Dataset.from_dict({"text": docs, "id": list(range(len(docs)))})
        if fmt == "datasetdict":
            path = directory / "dd"
            datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(
                str(path), num_shards={"train": 2, "test": 1})
            return path, {"split": "train"}
        ds.save_to_disk(str(directory / "saved"), num_shards=2)
        if fmt == "arrow-stream":  # one of datasets' own arrow files, given as a file
            path = directory / "saved" / "data-00000-of-00002.arrow"
            with pa.OSFile(str(path)) as f:
                return path, {"expected": docs[: pa.ipc.open_stream(f).read_all().num_rows]}
        path = directory / "saved"
    return path, {}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_decodes_to_the_tokenizer_ids(tmp_path, tiny_tokenizer_dir, fmt):
    docs = random_docs(300, seed=2)
    docs[5] = docs[40] = ""  # empty rows are skipped and counted (txt has no empty documents)
    docs[41] = "  \n "
    path, extra = write_corpus(tmp_path / "in", fmt, docs)
    expected_docs = extra.pop("expected", docs)
    result = build(tiny_tokenizer_dir, [path], tmp_path / "out", **extra)
    m = check_shards(tmp_path / "out", reference_ids(load_tok(tiny_tokenizer_dir), expected_docs), 500)
    assert len(m["shards"]) > 3 and result.manifest == m
    assert not (tmp_path / "out" / P.PROGRESS_NAME).exists()
    empties = sum(1 for d in expected_docs if not d.strip())
    assert m["stats"]["empty_documents_skipped"] == (0 if fmt == "txt" else empties)
    assert m["stats"]["documents_read"] == len([d for d in expected_docs if fmt != "txt" or d.strip()])


def test_directory_inputs_are_read_sorted_recursively_in_the_order_given(tmp_path, tiny_tokenizer_dir):
    corpus = tmp_path / "corpus"
    (corpus / "b" / "deeper").mkdir(parents=True)
    (corpus / ".hidden").mkdir()
    files = {"b/deeper/z.txt": "five\n\nsix", "a.txt": "one two\n\nthree", "b/c.jsonl": '{"text": "four"}\n',
             "b/note.md": "not read", ".hidden/x.txt": "not read", "b/.done": ""}
    for name, text in files.items():
        (corpus / name).write_text(text, encoding="utf-8")
    single = tmp_path / "first.txt"
    single.write_text("zero", encoding="utf-8")
    m = build(tiny_tokenizer_dir, [single, corpus], tmp_path / "out").manifest
    tok = load_tok(tiny_tokenizer_dir)
    order = ["zero", "one two", "three", "four", "five", "six"]  # a.txt, b/c.jsonl, b/deeper/z.txt
    assert [d.tolist() for d in ShardSet(tmp_path / "out").documents()] == reference_ids(tok, order)
    assert m["stats"]["ignored_files"] == {str(corpus): 1}
    assert [i["format"] for i in m["inputs"]] == ["txt", "directory"] and m["inputs"][1]["files"] == 3


def test_hub_dataset_is_streamed(tmp_path, tiny_tokenizer_dir):
    docs = random_docs(120, seed=3)
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "train.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in docs),
                                                  encoding="utf-8")
    out = tmp_path / "out"
    m = P.build(tokenizer=str(tiny_tokenizer_dir), dataset=str(tmp_path / "hub"), split="train", text_field="content",
                output=str(out), num_workers=2, shard_tokens=400, show_progress=False, log=lambda s: None).manifest
    check_shards(out, reference_ids(load_tok(tiny_tokenizer_dir), docs), 400)
    assert m["inputs"] == [{"format": "hub", "dataset": str(tmp_path / "hub"), "config": None, "split": "train"}]


@pytest.mark.parametrize("which", ["tiny", "teacher"])
def test_literal_special_token_strings_stay_text(tmp_path, request, which):
    tok_dir = request.getfixturevalue("tiny_tokenizer_dir" if which == "tiny" else "teacher_dir")
    tok = load_tok(tok_dir)
    docs = ["before [SEP] after", "[CLS] start [MASK] end [PAD]", "x[SEP]y", "[sep] lower", "[SEP]"]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    build(tok_dir, [tmp_path / "c.jsonl"], tmp_path / "out")
    shards = ShardSet(tmp_path / "out", verify=True)
    stream = shards.read(0, shards.num_tokens)
    special = {tok.sep_token_id, tok.cls_token_id, tok.mask_token_id, tok.pad_token_id}
    assert int((stream == tok.sep_token_id).sum()) == len(docs)  # SEP only after each document
    got = [d.tolist() for d in shards.documents()]
    assert got == reference_ids(tok, docs) and not special & set(sum(got, []))
    if which == "teacher":  # the real vocabulary has the pieces: "[SEP]" as text is "[", "sep", "]"
        assert got[4] == tok.convert_tokens_to_ids(["[", "sep", "]"]) == [1031, 19802, 1033]


def test_determinism_across_worker_counts(tmp_path, tiny_tokenizer_dir):
    (tmp_path / "c.txt").write_text("\n\n".join(random_docs(2500, seed=4)), encoding="utf-8")
    results = {}
    for n in (1, 2, 3):
        out = tmp_path / f"out{n}"
        m = build(tiny_tokenizer_dir, [tmp_path / "c.txt"], out, num_workers=n, shard_tokens=3000,
                  batch_chars=2000).manifest
        results[n] = (m["shards"], m["stats"], {e["file"]: (out / e["file"]).read_bytes() for e in m["shards"]})
    assert len(results[1][0]) > 5
    assert results[1] == results[2] == results[3]


def test_reading_stays_a_bounded_window_ahead_of_tokenizing(tiny_tokenizer_dir):
    spec = P.load_tokenizer(str(tiny_tokenizer_dir))
    pulled = []

    def endless():  # Pool.imap would try to drain this before yielding anything
        for i in itertools.count():
            pulled.append(i)
            yield ["the cat sat on the mat"] * 50, i

    n = len(reference_ids(load_tok(tiny_tokenizer_dir), ["the cat sat on the mat"])[0]) + 1  # + SEP
    stream = P.encode_stream(endless(), spec, "uint16", num_workers=2)
    for expected in range(5):
        meta, ids, lens = next(stream)
        assert meta == expected and lens.tolist() == [n] * 50 and ids.size == 50 * n
    assert len(pulled) <= 5 + P.IN_FLIGHT_PER_WORKER * 2
    stream.close()  # stops the pool


# --------------------------------------------------------------------------- kill and resume
def _cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "tools/pretokenize.py", *args], cwd=REPO, env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, out: Path, min_shards: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(list(out.glob("shard-*.bin"))) < min_shards:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "pretokenize wrote no shards in time"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its workers: its own process group (start_new_session)
    proc.wait()


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_bytes(tmp_path, tiny_tokenizer_dir):
    rng = random.Random(5)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 400))) for _ in range(12000)]
    (tmp_path / "c.txt").write_text("\n\n".join(docs), encoding="utf-8")
    args = ["--tokenizer_name", str(tiny_tokenizer_dir), "--input", str(tmp_path / "c.txt"), "--shard-tokens", "40000",
            "--num-workers", "2", "--batch-chars", "65536"]
    out = tmp_path / "killed"
    reference = build(tiny_tokenizer_dir, [tmp_path / "c.txt"], tmp_path / "whole", num_workers=2, shard_tokens=40000,
                      batch_chars=65536).manifest
    total = len(reference["shards"])
    assert total > 40

    _kill_when(_cli([*args, "--output_dir", str(out)]), out, 3)
    progress = json.loads((out / P.PROGRESS_NAME).read_text())
    # killed at 3+ shard files; the last may be renamed but not yet recorded: resume rewrites it
    assert not (out / MANIFEST_NAME).exists() and 2 <= len(progress["shards"]) < total
    assert progress["shards"] == reference["shards"][: len(progress["shards"])]
    with pytest.raises(ShardError, match="re-run it with the same arguments"):
        ShardSet(out)

    resumed_from = len(progress["shards"])
    _kill_when(_cli([*args, "--output_dir", str(out)]), out, resumed_from + 3)  # killed again while resuming
    proc = _cli([*args, "--output_dir", str(out)])
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "resuming" in stderr + stdout

    m = json.loads((out / MANIFEST_NAME).read_text())
    assert m["shards"] == reference["shards"] and m["stats"] == reference["stats"]
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_NAME] + [e["file"] for e in m["shards"]])
    for entry in m["shards"]:
        assert (out / entry["file"]).read_bytes() == (tmp_path / "whole" / entry["file"]).read_bytes()
    ShardSet(out, verify=True)

    before = snapshot(out)
    proc = _cli([*args, "--output_dir", str(out)])
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "already complete" in stdout, stderr
    assert snapshot(out) == before  # nothing rewritten


# --------------------------------------------------------------------------- refusing and overwriting
@pytest.fixture()
def finished(tmp_path, tiny_tokenizer_dir) -> Path:
    """A finished shard directory with an unrelated file of the user's in it."""
    (tmp_path / "good.txt").write_text("\n\n".join(random_docs(200, seed=6)), encoding="utf-8")
    out = tmp_path / "out"
    build(tiny_tokenizer_dir, [tmp_path / "good.txt"], out)
    (out / "notes.md").write_text("mine", encoding="utf-8")
    return out


def test_rerun_of_a_finished_directory_is_a_noop(finished, tiny_tokenizer_dir, capsys):
    before = snapshot(finished)
    rc = P.main(["--tokenizer_name", str(tiny_tokenizer_dir), "--input", str(finished.parent / "good.txt"),
                 "--output_dir", str(finished), "--shard-tokens", "500", "--num-workers", "1"])
    assert rc == 0 and "already complete" in capsys.readouterr().out
    assert snapshot(finished) == before


def test_refuses_other_inputs_or_tokenizer_and_overwrite_deletes_only_its_files(finished, tiny_tokenizer_dir,
                                                                                 teacher_dir):
    other = finished.parent / "other.txt"
    other.write_text("\n\n".join(random_docs(20, seed=7)), encoding="utf-8")
    before = snapshot(finished)
    with pytest.raises(P.PretokenizeError, match=r"(?s)other settings.*inputs: built from.*good\.txt.*other\.txt"
                                                 r".*--overwrite.*another --output"):
        build(tiny_tokenizer_dir, [other], finished)
    with pytest.raises(P.PretokenizeError,
                       match=r"(?s)tokenizer: built with .*tiny_tokenizer.*now .*teacher.*--overwrite"):
        build(teacher_dir, [finished.parent / "good.txt"], finished)
    with pytest.raises(P.PretokenizeError, match=r"shard_tokens: built with 500, now 501"):
        build(tiny_tokenizer_dir, [finished.parent / "good.txt"], finished, shard_tokens=501)
    assert snapshot(finished) == before

    (finished / ".shard-00009.bin.abc.tmp").write_bytes(b"half")
    m = build(tiny_tokenizer_dir, [other], finished, overwrite=True).manifest
    assert sorted(p.name for p in finished.iterdir()) == sorted(["notes.md", MANIFEST_NAME]
                                                                + [e["file"] for e in m["shards"]])
    check_shards(finished, reference_ids(load_tok(tiny_tokenizer_dir), random_docs(20, seed=7)), 500)


def test_refuses_stray_shards_and_an_unfinished_build_of_other_inputs(tmp_path, tiny_tokenizer_dir):
    (tmp_path / "a.txt").write_text("\n\n".join(random_docs(50, seed=8)), encoding="utf-8")
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "shard-00000.bin").write_bytes(b"\0\0")
    with pytest.raises(P.PretokenizeError,
                       match=r"(?s)1 shard files.*no manifest\.json or \.progress\.json.*--overwrite"):
        build(tiny_tokenizer_dir, [tmp_path / "a.txt"], stray)
    assert (stray / "shard-00000.bin").read_bytes() == b"\0\0"

    unfinished = tmp_path / "unfinished"
    build(tiny_tokenizer_dir, [tmp_path / "a.txt"], unfinished)
    manifest = json.loads((unfinished / MANIFEST_NAME).read_text())
    progress = {k: manifest[k] for k in ("dtype", "tokenizer", "inputs", "text_field", "shard_tokens")}
    progress.update(format=P.PROGRESS_FORMAT, version=1, shards=manifest["shards"][:1], consumed_documents=3,
                    documents_without_tokens=0, elapsed_seconds=0.0, text_field="body")
    (unfinished / MANIFEST_NAME).unlink()
    (unfinished / P.PROGRESS_NAME).write_text(json.dumps(progress))
    with pytest.raises(P.PretokenizeError, match=r"(?s)an unfinished build.*text_field: built with 'body', now 'text'"):
        build(tiny_tokenizer_dir, [tmp_path / "a.txt"], unfinished)


# --------------------------------------------------------------------------- bad inputs
def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_bad_inputs_say_what_to_do_and_lose_nothing(finished, tiny_tokenizer_dir, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = finished.parent / "good.txt"
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("\n  \n\t\n\n", encoding="utf-8")
    (tmp_path / "data.csv").write_text("text\nhello\n", encoding="utf-8")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.md").write_text("x", encoding="utf-8")
    _jsonl(tmp_path / "body.jsonl", [{"id": 1, "body": "hello"}])
    _jsonl(tmp_path / "late.jsonl", [{"text": "fine"}] * 5 + [{"txt": "typo"}])
    _jsonl(tmp_path / "empties.jsonl", [{"text": ""}, {"text": "   "}, {"text": None}])
    _jsonl(tmp_path / "number.jsonl", [{"text": 3}])
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    (tmp_path / "fake.jsonl.gz").write_bytes(b"not gzip at all")
    pq.write_table(pa.table({"content": ["a b"], "id": [1]}), tmp_path / "content.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    (tmp_path / "notparquet.parquet").write_bytes(b"PAR1 nope")
    cases = {
        "missing.txt": r"input '.*missing\.txt' does not exist; check the path",
        "data.csv": r"unsupported extension '\.csv'; supported: "
                    r"\.txt, \.txt\.gz, \.jsonl, \.jsonl\.gz, \.parquet, \.arrow",
        "nothing": r"holds no supported file \(found readme\.md\); supported: \.txt",
        "empty.txt": r"no text in .*empty\.txt: the files are empty",
        "blank.txt": r"no text in .*blank\.txt: the inputs hold no documents",
        "empties.jsonl": r"no text in .*empties\.jsonl: all 3 documents of the inputs are empty.*"
                         r"is --text-field 'text' the right field",
        "body.jsonl": r"body\.jsonl:1 has no field 'text' \(its fields are \['body', 'id'\]\); pass --text-field body",
        "late.jsonl": r"late\.jsonl:6 has no field 'text' \(its fields are \['txt'\]\); pass --text-field",
        "number.jsonl": r"number\.jsonl:1: field 'text' holds a int, not text",
        "broken.jsonl": r"broken\.jsonl:2: not valid JSON",
        "fake.jsonl.gz": r"cannot read .*fake\.jsonl\.gz: Not a gzipped file",
        "content.parquet": r"content\.parquet has no field 'text' \(its fields are \['content', 'id'\]\); "
                           r"pass --text-field content",
        "ints.parquet": r"column 'text' has type int64, not text",
        "notparquet.parquet": r"notparquet\.parquet is not a readable parquet file",
    }
    found_while_reading = {"blank.txt", "empties.jsonl", "late.jsonl", "broken.jsonl", "ints.parquet",
                           "empty.txt"}  # (an empty file among other inputs is no error)
    before = snapshot(finished)
    for name, message in cases.items():
        fresh = tmp_path / f"fresh-{name}"
        with pytest.raises(P.PretokenizeError, match=message):
            build(tiny_tokenizer_dir, [tmp_path / name], fresh)
        assert not fresh.exists(), name  # a failed build leaves no directory behind
        with pytest.raises(P.PretokenizeError):  # this message, or "holds finished shards built from other settings"
            build(tiny_tokenizer_dir, [good, tmp_path / name], finished)
        if name not in found_while_reading:  # checked before --overwrite deletes anything
            with pytest.raises(P.PretokenizeError, match=message):
                build(tiny_tokenizer_dir, [good, tmp_path / name], finished, overwrite=True)
        assert snapshot(finished) == before, name
    # the CLI: the same message on stderr, exit status 2, no traceback
    rc = P.main(["--tokenizer_name", str(tiny_tokenizer_dir), "--input", str(tmp_path / "body.jsonl"), "--output_dir",
                 str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "--text-field body" in err and "Traceback" not in err


def test_undecodable_bytes_are_replaced_and_counted_per_input(tmp_path, tiny_tokenizer_dir, capsys):
    (tmp_path / "bad.txt").write_bytes(b"hello \xff\xfe world\n\nok \xc3\x28 then\n\n" + "café".encode() + b"\n")
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "caf\xe9 time"}\n{"text": "\\udc80 lone"}\n'
                                         b'{"text": "\\u0000\\u0001"}\n'
                                         b'{"text": "\\u0002"}\n')  # the last batch: only a document without tokens
    out = tmp_path / "out"
    # --shard-tokens 1: a shard per document; the last batch opens one that gets no tokens
    rc = P.main(["--tokenizer_name", str(tiny_tokenizer_dir), "--input", str(tmp_path / "bad.txt"),
                 str(tmp_path / "bad.jsonl"), "--output_dir", str(out), "--num-workers", "1", "--no-progress",
                 "--batch-chars", "1", "--shard-tokens", "1"])
    stdout = capsys.readouterr().out
    assert rc == 0
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert m["stats"]["replaced_bytes"] == {str(tmp_path / "bad.txt"): 3, str(tmp_path / "bad.jsonl"): 1}
    assert m["stats"]["documents_without_tokens_skipped"] == 2  # control characters only
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_NAME] + [e["file"] for e in m["shards"]])
    assert f"{tmp_path / 'bad.txt'}: 3" in stdout and f"{tmp_path / 'bad.jsonl'}: 1" in stdout
    tok = load_tok(tiny_tokenizer_dir)
    docs = ["hello \ufffd\ufffd world", "ok \ufffd( then", "café", "caf\ufffd time", "\ufffd lone"]
    assert [d.tolist() for d in ShardSet(out).documents()] == reference_ids(tok, docs)


def _word_level_tokenizer(directory: Path, n_words: int, specials: dict) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[UNK]", *specials.values(), *(f"w{i}" for i in range(n_words))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", **specials).save_pretrained(directory)
    return directory


def test_tokenizers_that_cannot_work_are_refused(finished, tmp_path):
    from transformers import CanineTokenizer

    CanineTokenizer().save_pretrained(tmp_path / "canine")
    _word_level_tokenizer(tmp_path / "nosep", 10, {"pad_token": "[PAD]"})
    big = _word_level_tokenizer(tmp_path / "big", 70_000, {"sep_token": "[SEP]", "cls_token": "[CLS]"})
    good = finished.parent / "good.txt"
    before = snapshot(finished)
    with pytest.raises(P.PretokenizeError,
                       match=r"CanineTokenizer\) has no fast \(Rust `tokenizers`\) backend.*tokenizer\.json"):
        build(tmp_path / "canine", [good], finished, overwrite=True)
    with pytest.raises(P.PretokenizeError,
                       match=r"has no SEP token and no CLS token: distill separates documents with SEP"):
        build(tmp_path / "nosep", [good], finished, overwrite=True)
    with pytest.raises(P.PretokenizeError, match=r"70003 ids, which do not fit in uint16.*pass --dtype uint32"):
        build(big, [good], finished, overwrite=True)
    with pytest.raises(P.PretokenizeError, match="tokenizer directory .*no-such-dir' does not exist; "
                                                 "pass a local directory holding tokenizer.json"):
        build(tmp_path / "no-such-dir", [good], finished, overwrite=True)
    assert snapshot(finished) == before

    (tmp_path / "words.txt").write_text("w69999 w0 w65535\n\nw70000 w1", encoding="utf-8")
    notes = []
    m = P.build(tokenizer=str(big), inputs=[str(tmp_path / "words.txt")], output=str(tmp_path / "wide"), dtype="uint32",
                num_workers=1, show_progress=False, log=notes.append).manifest
    assert notes == ["note: writing uint32 shards (4 bytes per token): "
                     "the tokenizer's ids go up to 70002, beyond uint16"]
    assert m["dtype"] == "uint32" and (tmp_path / "wide" / "shard-00000.bin").stat().st_size == 4 * m["total_tokens"]
    assert [d.tolist() for d in ShardSet(tmp_path / "wide", verify=True).documents()] == [[70002, 3, 65538], [0, 4]]


# --------------------------------------------------------------------------- the real teacher on the real corpus
@pytest.mark.slow
def test_real_teacher_tokenizer_on_the_real_corpus(tmp_path, teacher_dir, corpus_dir):
    sotu = sorted((corpus_dir / "sotu").glob("*.txt"))[:3]
    brown = sorted((corpus_dir / "brown").glob("*.txt"))[:6]
    reviews = tmp_path / "reviews.jsonl"
    with open(corpus_dir / "reviews.jsonl", encoding="utf-8") as f:
        reviews.write_text("".join(next(f) for _ in range(400)), encoding="utf-8")
    out = tmp_path / "shards"
    rc = P.main(["--tokenizer_name", str(teacher_dir), "--input", *map(str, sotu + brown), str(reviews),
                 "--output_dir", str(out), "--shard-tokens", "20000", "--num-workers", "2", "--no-progress"])
    assert rc == 0
    docs = [d for p in sotu + brown for d in txt_reference(p.read_text(encoding="utf-8"))]
    docs += [json.loads(line)["text"] for line in reviews.read_text(encoding="utf-8").splitlines()]
    tok = load_tok(teacher_dir)
    m = check_shards(out, reference_ids(tok, docs), 20000)
    assert m["tokenizer"] == {
        "name_or_path": str(teacher_dir.resolve()), "class": type(tok).__name__, "vocab_size": 30522,
        "cls_token_id": 101, "sep_token_id": 102, "pad_token_id": 0, "mask_token_id": 103, "do_lower_case": True,
        "model_max_length": 512, "fingerprint": m["tokenizer"]["fingerprint"],
        "signature": tokenizer_signature(tok.backend_tokenizer.to_str())}
    assert len(m["shards"]) >= 3 and m["dtype"] == "uint16" and m["byte_order"] == "little"
    assert (out / "shard-00000.bin").stat().st_size == 2 * m["shards"][0]["num_tokens"]


def test_cli_help_names_every_flag():
    proc = subprocess.run([sys.executable, "tools/pretokenize.py", "--help"], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--tokenizer_name", "--input", "--output_dir", "--text-field", "--num-workers", "--shard-tokens",
                 "--dtype", "--overwrite", "--dataset", "--dataset-config", "--split", ".jsonl.gz", ".parquet",
                 ".arrow"):
        assert flag in proc.stdout, flag


# --------------------------------------------------------------------------- output directories
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, tiny_tokenizer_dir, capsys,
                                                                     monkeypatch):
    P_build = importlib.import_module("distill.pretokenize.build")  # the package exports build, the function

    (tmp_path / "a.txt").write_text("\n\n".join(random_docs(20)), encoding="utf-8")
    monkeypatch.setattr(P_build, "load_tokenizer", lambda *a: pytest.fail("work done before the output check"))
    args = ["--tokenizer_name", str(tiny_tokenizer_dir), "--input", str(tmp_path / "a.txt"), "--output_dir"]
    assert_unwritable_outputs_refused(P.main, args, "--output_dir", tmp_path, capsys, monkeypatch)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a 0500 directory: the monkeypatched test above covers it")
def test_a_read_only_output_directory_is_refused(tmp_path, tiny_tokenizer_dir, capsys):
    (tmp_path / "a.txt").write_text("\n\n".join(random_docs(20)), encoding="utf-8")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert P.main(["--tokenizer_name", str(tiny_tokenizer_dir), "--input", str(tmp_path / "a.txt"), "--output_dir",
                       str(locked)]) == 2
        assert "is not writable (permission denied)" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_a_full_disk_keeps_the_finished_shards_and_resumes(tmp_path, tiny_tokenizer_dir, capsys, monkeypatch):
    import errno

    from distill import shards as S

    (tmp_path / "a.txt").write_text("\n\n".join(random_docs(200, seed=3)), encoding="utf-8")
    out, reference = tmp_path / "out", tmp_path / "reference"
    build(tiny_tokenizer_dir, [tmp_path / "a.txt"], reference)
    real_write = S.ShardWriter._write

    def write(self, ids):
        if self.index == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / self.name))
        real_write(self, ids)

    monkeypatch.setattr(S.ShardWriter, "_write", write)
    args = ["--tokenizer_name", str(tiny_tokenizer_dir), "--input", str(tmp_path / "a.txt"), "--output_dir", str(out),
            "--shard-tokens", "500", "--num-workers", "1", "--no-progress"]
    assert P.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no space left on device writing {out} ({out / 'shard-00002.bin'}): the 2 "
                          f"finished shards in {out} are kept"), err
    assert "re-run the same command to resume" in err
    assert sorted(p.name for p in out.iterdir()) == [P.PROGRESS_NAME, "shard-00000.bin", "shard-00001.bin"]
    monkeypatch.setattr(S.ShardWriter, "_write", real_write)
    assert P.main(args) == 0
    assert {p.name: p.read_bytes() for p in out.glob("shard-*")} == \
        {p.name: p.read_bytes() for p in reference.glob("shard-*")}


# --------------------------------------------------------------------------- long documents
def test_long_documents_are_cut_at_whitespace_the_same_way_however_read(tmp_path, monkeypatch):
    rng = random.Random(5)
    long_line = " ".join(rng.choice(WORDS) for _ in range(3000))  # ~15,000 characters on one line
    lines = "\n".join(" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(100))  # ~20,000, many lines
    no_space = "x" * 2500
    docs = ["short one", long_line, "another\nshort", lines, no_space + " tail", "  \t" + long_line[:1500]]
    limit = 1000
    expected = [p for d in txt_reference("\n\n".join(docs) + "\n") for p in P_inputs.split_long(d, limit)]
    assert all(len(p) <= limit for p in expected) and "".join(expected[1:16]) == long_line
    assert all(p[0] in " \n\t" for p in expected[2:16])  # cut before whitespace: words stay whole
    assert "x" * limit in expected  # no whitespace in the window: cut at the limit
    path = tmp_path / "long.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    for block in (7, 64, 999, 1 << 22):  # cut while read, across blocks: the same pieces
        monkeypatch.setattr(P_inputs, "READ_BLOCK", block)
        assert list(P.DocumentReader(P.resolve_inputs([str(path)]), "text", max_doc_chars=limit)) == expected
    _jsonl(tmp_path / "long.jsonl", [{"text": d} for d in txt_reference("\n\n".join(docs) + "\n")])
    assert list(P.DocumentReader(P.resolve_inputs([str(tmp_path / "long.jsonl")]), "text",
                                 max_doc_chars=limit)) == expected
    # the default leaves these documents whole
    assert list(P.DocumentReader(P.resolve_inputs([str(path)]), "text")) == txt_reference("\n\n".join(docs) + "\n")


MEASURE = """import resource, sys
from distill.pretokenize import main
assert main(sys.argv[1:]) == 0
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_memory_stays_flat_on_a_10_MB_single_line_document(tmp_path, tiny_tokenizer_dir):
    """Peak RSS of a one-process build (--num-workers 1): a 10 MB one-line document adds less than 300 MB over a
    one-line 10 kB one (it added 1.05 GB when documents were tokenized whole). The bound: the tokenizer takes
    ~100-150 bytes per character it is given at once, at most --batch-chars + --max-doc-chars (1.5 M) by default."""
    rng = random.Random(0)
    words = " ".join(rng.choice(WORDS) for _ in range(2_100_000))[:10_000_000]
    (tmp_path / "big.txt").write_text(words + "\n", encoding="utf-8")
    (tmp_path / "small.txt").write_text(words[:10_000] + "\n", encoding="utf-8")
    peaks = {}
    for name in ("small", "big"):
        proc = subprocess.run([sys.executable, "-c", MEASURE, "--tokenizer_name", str(tiny_tokenizer_dir), "--input",
                               str(tmp_path / f"{name}.txt"), "--output_dir", str(tmp_path / f"out-{name}"),
                               "--num-workers", "1", "--no-progress"], env=ENV, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[name] = int(proc.stdout.split()[-1]) * 1024  # ru_maxrss: KiB on Linux
    growth = peaks["big"] - peaks["small"]
    assert growth < 300 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MiB"
    manifest = json.loads((tmp_path / "out-big" / MANIFEST_NAME).read_text())
    assert manifest["total_documents"] == 10 and manifest["max_doc_chars"] == P.DEFAULT_MAX_DOC_CHARS
