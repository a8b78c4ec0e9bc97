"""The tokenizer signature of a shard manifest (distill.shards.tokenizer_signature) and its check
(distill.data.check_compatible): shards tokenized by another tokenizer of the same size and special
ids (lower-casing off, two vocabulary entries swapped) are refused with the difference named, or
trained on with a warning under allow_mismatch; old manifests without a signature get a note."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import ASSETS, build_tiny_tokenizer, save_tiny_teacher

import distill.pretokenize as P
from distill.data import DataError, check_compatible
from distill.shards import ShardSet, tokenizer_signature, tokenizer_vocabulary

TEXT = "the cat sat on the mat\n\nThe Old Man read a long sentence about water and air\n\nHello World"


def load(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def signature_of(tok) -> dict:
    return tokenizer_signature(tok.backend_tokenizer.to_str())


def swapped_copy(source: Path, target: Path, a: str, b: str) -> Path:
    """`source`'s tokenizer with the ids of tokens `a` and `b` exchanged: same size, same special ids."""
    shutil.copytree(source, target)
    lines = (target / "vocab.txt").read_text(encoding="utf-8").split("\n")
    i, j = lines.index(a), lines.index(b)
    lines[i], lines[j] = lines[j], lines[i]
    (target / "vocab.txt").write_text("\n".join(lines), encoding="utf-8")
    data = json.loads((target / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (target / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Three tokenizers of one size and special ids: cased, uncased, and cased with two entries swapped."""
    root = tmp_path_factory.mktemp("signature")
    build_tiny_tokenizer(root / "lower", lowercase=True)
    build_tiny_tokenizer(root / "cased", lowercase=False)
    swapped_copy(root / "lower", root / "swapped", "water", "word")
    return root


@pytest.fixture()
def shards(tmp_path, tokenizers) -> Path:
    """Shards built by pretokenize with the lower-casing tokenizer (a copy, which the test may delete)."""
    tok_dir = shutil.copytree(tokenizers / "lower", tmp_path / "tok")
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    P.build(tokenizer=str(tok_dir), inputs=[str(tmp_path / "a.txt")], output=str(tmp_path / "shards"),
            num_workers=1, show_progress=False, log=lambda m: None, command=["test"])
    return tmp_path / "shards"


def test_the_same_tokenizer_loaded_twice_has_one_signature(tmp_path, tokenizers, shards):
    first, second = signature_of(load(tokenizers / "lower")), signature_of(load(tokenizers / "lower"))
    assert first == second
    load(tokenizers / "lower").save_pretrained(tmp_path / "saved_again")
    assert signature_of(load(tmp_path / "saved_again")) == first
    assert ShardSet(shards).tokenizer["signature"] == first  # what pretokenize records
    assert first["vocab_size"] == len(load(tokenizers / "lower"))
    assert tokenizer_vocabulary(load(tokenizers / "lower").backend_tokenizer.to_str()) == \
        load(tokenizers / "lower").backend_tokenizer.get_vocab(with_added_tokens=True)


def test_the_real_teacher_loaded_twice_has_one_signature():
    if not (ASSETS / "teacher" / "tokenizer.json").is_file():
        pytest.skip("no offline teacher")
    assert signature_of(load(ASSETS / "teacher")) == signature_of(load(ASSETS / "teacher"))


def test_lower_casing_or_one_swapped_entry_changes_the_signature(tokenizers):
    lower, cased, swapped = (signature_of(load(tokenizers / n)) for n in ("lower", "cased", "swapped"))
    assert len({lower["sha256"], cased["sha256"], swapped["sha256"]}) == 3
    assert lower["vocab_sha256"] == cased["vocab_sha256"] and lower["normalizer"] != cased["normalizer"]
    assert lower["vocab_sha256"] != swapped["vocab_sha256"] and lower["normalizer"] == swapped["normalizer"]


def test_merges_in_either_spelling_give_one_signature():
    bpe = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}}
    assert tokenizer_signature(bpe) == tokenizer_signature({"model": {**bpe["model"], "merges": [["a", "b"]]}})
    assert tokenizer_signature(bpe) != tokenizer_signature({"model": {**bpe["model"], "merges": []}})


def test_shards_of_the_teachers_tokenizer_pass(tokenizers, shards, capsys):
    check_compatible(ShardSet(shards).tokenizer, load(tokenizers / "lower"))
    check_compatible(ShardSet(shards), load(tokenizers / "lower"))
    assert capsys.readouterr().out == ""


def test_lower_casing_off_is_refused_and_named(tokenizers, shards):
    info = ShardSet(shards).tokenizer
    with pytest.raises(DataError) as e:
        check_compatible(info, load(tokenizers / "cased"))
    msg = str(e.value)
    assert "normalizer.lowercase: shards True, model False" in msg, msg
    assert "vocabulary" not in msg  # the same vocabulary
    assert "re-run tools/pretokenize.py with the model's tokenizer" in msg and "--allow_tokenizer_mismatch" in msg


def test_a_swapped_vocabulary_entry_is_refused_with_the_ids(tokenizers, shards):
    tok = load(tokenizers / "swapped")
    water, word = tok.convert_tokens_to_ids(["water", "word"])
    with pytest.raises(DataError) as e:
        check_compatible(ShardSet(shards).tokenizer, tok)
    msg = str(e.value)
    first, second = sorted([(word, "water", "word"), (water, "word", "water")])
    assert (f"vocabulary: 2 of {len(tok)} ids map to other tokens (e.g. id {first[0]}: shards {first[1]!r}, model "
            f"{first[2]!r}; id {second[0]}: shards {second[1]!r}, model {second[2]!r})") in msg, msg
    assert "normalizer" not in msg


def test_without_the_shards_tokenizer_the_vocabulary_difference_is_still_named(tokenizers, shards):
    info = ShardSet(shards).tokenizer
    shutil.rmtree(info["name_or_path"])  # gone (or changed): the ids cannot be listed
    with pytest.raises(DataError, match=r"vocabulary: 239 tokens in the shards' tokenizer, 239 in the model's, with "
                                        r"other token -> id entries \(sha256 [0-9a-f]{12} vs [0-9a-f]{12}"):
        check_compatible(info, load(tokenizers / "swapped"))


def test_allow_mismatch_warns_and_goes_on(tokenizers, shards, capsys):
    check_compatible(ShardSet(shards).tokenizer, load(tokenizers / "cased"), allow_mismatch=True)
    err = capsys.readouterr().err
    assert err.startswith("warning: the shards were built with tokenizer") and "lowercase: shards True" in err
    assert "--allow_tokenizer_mismatch: training on these shards anyway" in err


def test_the_size_and_special_ids_are_refused_even_with_allow_mismatch(tokenizers, shards):
    info = {**ShardSet(shards).tokenizer, "sep_token_id": 7}
    with pytest.raises(DataError, match="sep_token_id: shards 7, model 3"):
        check_compatible(info, load(tokenizers / "lower"), allow_mismatch=True)


def test_a_manifest_without_a_signature_still_works_with_a_note(tokenizers, shards, capsys):
    info = dict(ShardSet(shards).tokenizer)
    del info["signature"]  # a manifest written before signatures
    check_compatible(info, load(tokenizers / "cased"))
    out = capsys.readouterr().out
    assert out.startswith("note: the shards' manifest records no tokenizer signature") and out.count("\n") == 1
    manifest_path = shards / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["tokenizer"]["signature"]
    for entry in manifest["shards"]:
        del entry["max_id"]
    manifest_path.write_text(json.dumps(manifest))
    assert len(ShardSet(shards, verify=True).shards) == 1  # the old manifest reads as before


def test_a_resumed_or_repeated_pretokenize_is_not_disturbed(tokenizers, shards, tmp_path):
    again = P.build(tokenizer=str(tmp_path / "tok"), inputs=[str(tmp_path / "a.txt")], output=str(shards),
                    num_workers=1, show_progress=False, log=lambda m: None, command=["test"])
    assert again.already_complete


def test_the_trainer_refuses_shards_of_a_teacher_that_does_not_lower_case(tmp_path, tokenizers, shards, capsys):
    from transformers import AutoConfig

    from distill.config import DistillConfig
    from distill.preflight import build_dataset

    for name in ("lower", "cased"):
        save_tiny_teacher(tmp_path / f"teacher-{name}", tokenizers / name)
    cfg = DistillConfig(data=str(shards), max_seq_len=16)
    same = tmp_path / "teacher-lower"
    assert len(build_dataset(cfg, AutoConfig.from_pretrained(same), str(same))) > 0
    assert "note:" not in capsys.readouterr().out  # verified
    cased = tmp_path / "teacher-cased"
    with pytest.raises(DataError, match="normalizer.lowercase: shards True, model False"):
        build_dataset(cfg, AutoConfig.from_pretrained(cased), str(cased))
