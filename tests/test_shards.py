"""distill/shards.py, the format's one writer and reader: literal bytes on disk, shard cuts at
document boundaries, the manifest's fields, no half-written files; and distill-inspect's report."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, cpu_env

from distill import shards as S
from distill.inspect_shards import main as inspect_main

TOKENIZER = {"name_or_path": "tiny", "vocab_size": 300, "cls_token_id": 2, "sep_token_id": 3, "pad_token_id": 0,
             "mask_token_id": 4, "do_lower_case": True, "model_max_length": 512, "fingerprint": "tiny"}
DOCS = [[11, 12], [13], [14, 15, 16]]  # stream: 11 12 SEP | 13 SEP | 14 15 16 SEP


def test_round_trip_literal_ids_and_bytes(tmp_path):
    manifest = S.write_documents(tmp_path, DOCS, tokenizer=TOKENIZER, shard_tokens=4, inputs=["made up"])
    # shard 0 closes with the document that reaches 4 tokens (5 tokens), shard 1 likewise (4 tokens)
    assert (tmp_path / "shard-00000.bin").read_bytes() == bytes([11, 0, 12, 0, 3, 0, 13, 0, 3, 0])
    assert (tmp_path / "shard-00001.bin").read_bytes() == bytes([14, 0, 15, 0, 16, 0, 3, 0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "shard-00000.bin", "shard-00001.bin"]
    assert json.loads((tmp_path / S.MANIFEST_NAME).read_text()) == manifest
    assert list(manifest) == ["format", "version", "dtype", "byte_order", "tokenizer", "shards", "total_tokens",
                              "total_documents", "inputs"]
    assert manifest["format"] == S.FORMAT_NAME and manifest["version"] == S.FORMAT_VERSION
    assert [(e["file"], e["num_tokens"], e["num_documents"]) for e in manifest["shards"]] == [
        ("shard-00000.bin", 5, 2), ("shard-00001.bin", 4, 1)]
    assert manifest["total_tokens"] == 9 and manifest["total_documents"] == 3 and manifest["inputs"] == ["made up"]

    shards = S.ShardSet(tmp_path, verify=True)
    assert [d.tolist() for d in shards.documents()] == DOCS
    assert shards.read(1, 8).tolist() == [12, 3, 13, 3, 14, 15, 16]  # across the shard boundary
    assert shards.tokenizer == TOKENIZER and shards.num_documents == 3


def test_uint32_and_ids_that_do_not_fit(tmp_path):
    wide = {**TOKENIZER, "vocab_size": 70_000, "sep_token_id": 69_999}
    S.write_documents(tmp_path / "wide", [[65_536, 7]], tokenizer=wide, dtype="uint32")
    assert (tmp_path / "wide" / "shard-00000.bin").read_bytes() == np.array([65_536, 7, 69_999], "<u4").tobytes()
    assert [d.tolist() for d in S.ShardSet(tmp_path / "wide").documents()] == [[65_536, 7]]
    with pytest.raises(S.ShardError, match="70000 ids, which do not fit in uint16.*--dtype uint32"):
        S.write_documents(tmp_path / "narrow", [[1]], tokenizer=wide)


def test_writer_numbers_from_first_index_and_abandon_leaves_nothing(tmp_path):
    recorded = []
    writer = S.ShardWriter(tmp_path, "uint16", 3, first_index=7, on_shard=lambda e, consumed: recorded.append(consumed))
    # documents at stream positions 4, 5, 6; position 5 has no tokens (length 0: dropped)
    writer.add(np.array([20, 3, 21, 22, 3], dtype="<u2"), np.array([2, 0, 3]), np.array([4, 5, 6]))
    assert recorded == [7] and sorted(p.name for p in tmp_path.iterdir()) == ["shard-00007.bin"]
    assert writer.documents_without_tokens == 1
    writer.add(np.array([23, 3], dtype="<u2"), np.array([2]), np.array([7]))  # below 3 tokens: stays open
    assert len(list(tmp_path.iterdir())) == 2  # the shard and the open shard's temporary
    writer.abandon()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00007.bin"]


def test_an_empty_corpus_has_a_manifest_and_no_shards_which_readers_refuse(tmp_path, capsys):
    manifest = S.write_documents(tmp_path, [], tokenizer=TOKENIZER)
    assert manifest["shards"] == [] and manifest["total_tokens"] == 0
    assert [p.name for p in tmp_path.iterdir()] == [S.MANIFEST_NAME]
    message = (f"{tmp_path} holds no shards: its manifest lists none (were its inputs empty?); "
               "re-run tools/pretokenize.py")
    with pytest.raises(S.ShardError, match=re.escape(message)):
        S.ShardSet(tmp_path)
    assert inspect_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")


def test_each_shard_records_its_largest_id(tmp_path):
    manifest = S.write_documents(tmp_path, [[11, 299], [13], [14, 15, 16]], tokenizer=TOKENIZER, shard_tokens=4)
    assert [e["max_id"] for e in manifest["shards"]] == [299, 16]  # SEP (3) included, below both


def test_inspect_reports_the_statistics(tmp_path, capsys):
    S.write_documents(tmp_path, DOCS, tokenizer=TOKENIZER, shard_tokens=4)
    assert inspect_main([str(tmp_path), "--max_seq_length", "5", "128"]) == 0
    assert capsys.readouterr().out == (
        f"{tmp_path}: sizes checked\n"
        "  tokenizer   tiny (vocab 300, 7 ids used)\n"
        "  shards      2 x uint16, 0.0 MiB, 2.00 bytes/token\n"
        "  documents   3  (tokens each: mean 2, median 2, max 3)\n"
        "  tokens      9\n"
        "  windows@5    3\n"
        "  windows@128  1\n"
    )


@pytest.mark.parametrize("seq_len", ["1", "2"])
def test_inspect_refuses_windows_too_short(tmp_path, capsys, seq_len):
    S.write_documents(tmp_path, DOCS, tokenizer=TOKENIZER)
    assert inspect_main([str(tmp_path), "--max_seq_length", "128", seq_len]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --max_seq_length {seq_len} is too small") and "--max_seq_length 3 or more" in err


def test_inspect_script_names_a_missing_directory(tmp_path):
    proc = subprocess.run([sys.executable, "tools/inspect_shards.py", str(tmp_path / "none"), "--verify"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=cpu_env())
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {tmp_path / 'none'}: no such directory; build one "
                                                           "with tools/pretokenize.py"), proc.stderr


@pytest.mark.parametrize("edit, key", [
    (lambda m: m.pop("shards"), "'shards'"),
    (lambda m: m.pop("dtype"), "'dtype'"),
    (lambda m: m["tokenizer"].pop("vocab_size"), "'tokenizer.vocab_size'"),
    (lambda m: m["tokenizer"].pop("sep_token_id"), "'tokenizer.sep_token_id'"),
    (lambda m: m["shards"][1].pop("num_tokens"), "'shards[1].num_tokens'"),
    (lambda m: m["shards"][0].pop("sha256"), "'shards[0].sha256'"),
])
def test_a_manifest_missing_a_key_is_named(tmp_path, edit, key):
    path = write_edited_manifest(tmp_path, edit)
    with pytest.raises(S.ShardError, match=re.escape(f"{path}: no {key} key; the manifest is incomplete")):
        S.ShardSet(tmp_path)


def write_edited_manifest(directory, edit):
    """A shard directory of DOCS whose manifest `edit` changed in place; the manifest's path."""
    S.write_documents(directory, DOCS, tokenizer=TOKENIZER, shard_tokens=4)
    path = directory / S.MANIFEST_NAME
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["shards"][0].update(num_tokens="5"), "'shards[0].num_tokens' is '5', not an integer >= 0"),
    (lambda m: m["tokenizer"].update(vocab_size=0), "'tokenizer.vocab_size' is 0, not an integer >= 1"),
    (lambda m: m["shards"][0].update(file="../x.bin"), "'shards[0].file' is '../x.bin', not a shard file name"),
    (lambda m: m.update(shards={}), "'shards' is {}, not a list"),
    (lambda m: m["shards"][1].update(max_id=-1), "'shards[1].max_id' is -1, not an integer >= 0"),
    (lambda m: m["tokenizer"].update(signature="abc"), "'tokenizer.signature' is 'abc', not an object with a 'sha256'"),
])
def test_a_manifest_with_a_wrong_value_is_named(tmp_path, edit, message):
    path = write_edited_manifest(tmp_path, edit)
    with pytest.raises(S.ShardError, match=re.escape(f"{path}: {message}")):
        S.ShardSet(tmp_path)


def test_ids_outside_the_vocabulary_are_named_with_shard_and_offset(tmp_path, capsys):
    # 9 tokens in two shards; id 300 (= vocab_size) at token 2 of shard 1, 299 is the largest valid id
    S.write_documents(tmp_path, [[11, 12], [13], [299, 15, 300, 301]], tokenizer=TOKENIZER, shard_tokens=4)
    S.ShardSet(tmp_path)  # sizes and checksums are right: only the id check can tell
    message = (f"{tmp_path / 'shard-00001.bin'}: token id 300 at token offset 2 (byte 4) is outside the vocabulary "
               "of 300 ids of tokenizer 'tiny'")
    with pytest.raises(S.ShardError, match=re.escape(message)):
        S.ShardSet(tmp_path, verify=True)
    assert inspect_main([str(tmp_path), "--verify"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")
    assert inspect_main([str(tmp_path)]) == 2  # the statistics read every id too
    assert capsys.readouterr().err.startswith(f"error: {message}")


def test_the_id_check_reads_in_blocks(tmp_path):
    ids = list(range(5, 290)) * 40 + [7000]
    S.write_documents(tmp_path, [ids], tokenizer=TOKENIZER, shard_tokens=1 << 20)
    with pytest.raises(S.ShardError, match=re.escape(f"token id 7000 at token offset {len(ids) - 1} ")):
        S.ShardSet(tmp_path).check(verify=True, block_tokens=1000)
    assert S.first_id_out_of_range(np.array([1, 2, 3], dtype="<u2"), 4) is None
