"""distill/data.py: windows over shards, the sampler's order, rank split and resume, errors."""
from __future__ import annotations

import pickle
import random
import re

import pytest
import torch
from helpers import write_shard_dir
from torch.utils.data import DataLoader

from distill.data import DataError, WindowDataset, WindowSampler, check_compatible
from distill.shards import ShardError, ShardSet

CLS, SEP, PAD = 2, 3, 0


def make_docs(num_docs: int, seed: int = 0) -> list[list[int]]:
    """Documents of 1..23 ids in 10..299 (never a special id), lengths varied so windows cross them."""
    rng = random.Random(seed)
    return [[rng.randrange(10, 300) for _ in range(rng.randrange(1, 24))] for _ in range(num_docs)]


def stream_of(docs: list[list[int]]) -> list[int]:
    return [t for doc in docs for t in doc + [SEP]]


def expected_window(stream: list[int], i: int, L: int, pad: int = PAD) -> tuple[list[int], list[int]]:
    body = stream[i * (L - 2):(i + 1) * (L - 2)]
    ids = [CLS] + body + [SEP]
    return ids + [pad] * (L - len(ids)), [1] * len(ids) + [0] * (L - len(ids))


@pytest.fixture(scope="module")
def docs():
    return make_docs(40)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, docs):
    return write_shard_dir(tmp_path_factory.mktemp("shards"), docs, shard_tokens=64)


# --------------------------------------------------------------------------- windows
@pytest.mark.parametrize("L", [5, 8, 128])
def test_windows_are_cls_stream_slice_sep_padded(shard_dir, docs, L):
    stream = stream_of(docs)
    ds = WindowDataset(shard_dir, L)
    assert len(ds.shards.shards) > 5  # the stream really spans several shard files
    assert ds.shards.num_tokens == len(stream)
    assert len(ds) == -(-len(stream) // (L - 2))
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"input_ids", "attention_mask"}
        assert item["input_ids"].dtype == torch.long and item["attention_mask"].dtype == torch.long
        assert item["input_ids"].shape == item["attention_mask"].shape == (L,)
        ids, mask = expected_window(stream, i, L)
        assert item["input_ids"].tolist() == ids, i
        assert item["attention_mask"].tolist() == mask, i


@pytest.mark.parametrize("L", [5, 8])
def test_windows_cross_shard_boundaries(shard_dir, docs, L):
    stream = stream_of(docs)
    ds = WindowDataset(shard_dir, L)
    stride = L - 2
    boundaries = ds.shards.offsets[1:-1]
    crossing = [i for i in range(len(ds)) if any(i * stride < b < (i + 1) * stride for b in boundaries)]
    assert crossing, "the fixture should make windows that straddle a shard boundary"
    for i in crossing:
        assert ds[i]["input_ids"].tolist() == expected_window(stream, i, L)[0]


def test_last_partial_window_is_padded_and_masked(tmp_path):
    stream_docs = [[11, 12, 13], [14, 15, 16, 17]]  # stream: 11 12 13 SEP 14 15 16 17 SEP (9 tokens)
    ds = WindowDataset(write_shard_dir(tmp_path / "s", stream_docs, pad=299, shard_tokens=4), 6)  # stride 4
    assert len(ds) == 3
    assert ds[0]["input_ids"].tolist() == [CLS, 11, 12, 13, SEP, SEP]
    assert ds[1]["input_ids"].tolist() == [CLS, 14, 15, 16, 17, SEP]
    last = ds[2]
    assert last["input_ids"].tolist() == [CLS, SEP, SEP, 299, 299, 299]  # the stream's SEP, then the window's
    assert last["attention_mask"].tolist() == [1, 1, 1, 0, 0, 0]
    assert ds[-1]["input_ids"].tolist() == last["input_ids"].tolist()
    with pytest.raises(IndexError):
        ds[3]


def test_stream_that_fills_the_last_window_exactly_makes_no_empty_window(tmp_path):
    ds = WindowDataset(write_shard_dir(tmp_path / "s", [[11, 12, 13], [14, 15, 16, 17]]), 5)  # 9 tokens, stride 3
    assert len(ds) == 3
    assert ds[2]["input_ids"].tolist() == [CLS, 16, 17, SEP, SEP]
    assert ds[2]["attention_mask"].tolist() == [1] * 5


def test_one_shard_directory_serves_several_lengths(shard_dir):
    short, long = WindowDataset(shard_dir, 8), WindowDataset(shard_dir, 14)  # stride 6 and 12
    for i in range(len(long) - 1):
        joined = short[2 * i]["input_ids"][1:-1].tolist() + short[2 * i + 1]["input_ids"][1:-1].tolist()
        assert long[i]["input_ids"][1:-1].tolist() == joined


def test_shards_of_a_tokenizer_without_pad_are_valid_but_make_no_windows(tmp_path):
    directory = write_shard_dir(tmp_path / "s", [[5, 6, 7]], pad=None)
    assert ShardSet(directory).num_tokens == 4  # the format accepts them (pretokenize writes pad_token_id null)
    with pytest.raises(DataError, match="no PAD token"):
        WindowDataset(directory, 8)


def test_dataset_exposes_shards_length_and_tokenizer(shard_dir):
    shards = ShardSet(shard_dir)
    ds = WindowDataset(shards, 8)
    assert ds.shards is shards and ds.max_seq_len == 8
    assert ds.tokenizer_info["sep_token_id"] == SEP and ds.tokenizer_info["vocab_size"] == 300


def test_dataset_pickles_without_its_memory_maps(tmp_path):
    directory = write_shard_dir(tmp_path / "s", make_docs(2000, seed=3), shard_tokens=4096)
    ds = WindowDataset(directory, 128)
    before = [ds[i]["input_ids"] for i in range(0, len(ds), 7)]  # opens the memory maps
    blob = pickle.dumps(ds)
    assert len(blob) < ds.shards.num_tokens * ds.shards.dtype.itemsize / 4  # the corpus is not in it
    again = pickle.loads(blob)
    assert all(m is None for m in again.shards._maps)
    after = [again[i]["input_ids"] for i in range(0, len(again), 7)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_give_the_same_batches(shard_dir, context):
    ds = WindowDataset(shard_dir, 8)
    ds[0]  # memory maps open in the parent before the workers start

    def batches(num_workers):
        sampler = WindowSampler(len(ds), num_replicas=1, rank=0, seed=5)
        kwargs = {"multiprocessing_context": context} if num_workers else {}
        loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=num_workers, **kwargs)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == -(-len(ds) // 4)
    assert serial[0]["input_ids"].shape == (4, 8)
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"], b["attention_mask"])


# --------------------------------------------------------------------------- sampler
def rank_lists(n, world, **kwargs) -> list[list[int]]:
    return [list(WindowSampler(n, num_replicas=world, rank=r, **kwargs)) for r in range(world)]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 1234])
@pytest.mark.parametrize("n", [1, 7, 37, 100])
def test_ranks_cover_every_sample_exactly_once(n, seed, world):
    lists = rank_lists(n, world, seed=seed)
    flat = [i for part in lists for i in part]
    assert sorted(flat) == list(range(n))
    assert [len(WindowSampler(n, num_replicas=world, rank=r, seed=seed)) for r in range(world)] == list(map(len, lists))
    assert max(map(len, lists)) - min(map(len, lists)) <= 1


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 1234])
@pytest.mark.parametrize("n", [1, 7, 37, 100])
def test_drop_last_gives_equal_disjoint_parts(n, seed, world):
    lists = rank_lists(n, world, seed=seed, drop_last=True)
    flat = [i for part in lists for i in part]
    assert len(set(flat)) == len(flat) and set(flat) <= set(range(n))
    assert len({len(part) for part in lists}) == 1
    assert len(lists[0]) == len(WindowSampler(n, num_replicas=world, rank=world - 1, seed=seed, drop_last=True))
    assert n - len(flat) == n % world <= world - 1


def test_order_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = list(WindowSampler(500, num_replicas=1, rank=0, seed=3))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(99)
    b = list(WindowSampler(500, num_replicas=1, rank=0, seed=3))
    assert a == b and a != list(range(500))
    assert a != list(WindowSampler(500, num_replicas=1, rank=0, seed=4))


def test_epochs_give_different_orders():
    sampler = WindowSampler(500, num_replicas=1, rank=0, seed=3)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders[0] != orders[1] != orders[2] != orders[0]
    assert all(sorted(o) == list(range(500)) for o in orders)
    sampler.set_epoch(1)
    assert list(sampler) == orders[1]
    # (seed, epoch) pairs do not alias: seed 4 epoch 0 is not seed 3 epoch 1
    assert list(WindowSampler(500, num_replicas=1, rank=0, seed=4)) != orders[1]


def test_no_shuffle_keeps_stream_order():
    assert rank_lists(10, 3, shuffle=False) == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_resume_after_global_batches_gives_each_rank_the_rest(world, drop_last):
    n, micro, epoch = 103, 3, 2
    full = []
    for r in range(world):
        s = WindowSampler(n, num_replicas=world, rank=r, seed=11, drop_last=drop_last)
        s.set_epoch(epoch)
        full.append(list(s))
    for steps in range(0, n // (world * micro) + 1):
        consumed = steps * world * micro  # global samples, as the trainer counts them
        for r in range(world):
            s = WindowSampler(n, num_replicas=world, rank=r, seed=11, drop_last=drop_last, start_sample=consumed)
            s.set_epoch(epoch)
            assert list(s) == full[r][steps * micro:], (steps, r)
            assert len(s) == len(full[r]) - steps * micro


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [0, 1, 5, 50, 99, 100])
def test_resume_from_any_count_gives_exactly_the_rest_of_the_epoch(world, k):
    n = 100
    order = list(WindowSampler(n, num_replicas=1, rank=0, seed=8))
    rest = [list(WindowSampler(n, num_replicas=world, rank=r, seed=8, start_sample=k)) for r in range(world)]
    assert sorted(i for part in rest for i in part) == sorted(order[k:])
    assert rest == [order[k + r::world] for r in range(world)]


def test_resume_through_a_dataloader_like_the_trainer(shard_dir):
    ds = WindowDataset(shard_dir, 5)
    world, micro, stop_after = 2, 4, 3

    def run(start, limit=None):
        out = []
        for r in range(world):
            sampler = WindowSampler(len(ds), num_replicas=world, rank=r, seed=1, drop_last=True, start_sample=start)
            sampler.set_epoch(1)
            loader = DataLoader(ds, batch_size=micro, sampler=sampler, drop_last=True)
            out.append([b["input_ids"] for b in loader][:limit])
        return out

    full = run(0)
    resumed = run(stop_after * world * micro)
    for r in range(world):
        assert len(resumed[r]) == len(full[r]) - stop_after
        assert all(torch.equal(a, b) for a, b in zip(resumed[r], full[r][stop_after:], strict=True))


def test_set_start_and_set_epoch():
    s = WindowSampler(20, num_replicas=2, rank=1, seed=0, start_sample=6)
    order = WindowSampler(20, num_replicas=1, rank=0, seed=0).order().tolist()
    assert list(s) == order[7::2] and len(s) == 7
    s.set_epoch(0)  # the start is kept: it belongs to whichever epoch is being read
    assert len(s) == 7
    s.set_start(0)
    assert list(s) == order[1::2] and len(s) == 10
    s.set_start(20)
    assert list(s) == [] and len(s) == 0


def test_world_defaults_to_torch_distributed(tmp_path):
    import torch.distributed as dist

    assert WindowSampler(10).num_replicas == 1 and WindowSampler(10).rank == 0
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", world_size=1, rank=0)
    try:
        s = WindowSampler(10, num_replicas=3)
        assert (s.num_replicas, s.rank) == (3, 0)
        s = WindowSampler(10)
        assert (s.num_replicas, s.rank) == (1, 0)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kwargs, message", [
    ({"num_replicas": 2, "rank": 2}, "rank 2 is out of range for 2 replicas"),
    ({"num_replicas": 2, "rank": -1}, "rank must be at least 0"),
    ({"num_replicas": 0, "rank": 0}, "num_replicas must be at least 1"),
    ({"start_sample": 11}, "start_sample 11 exceeds the 10 samples of an epoch"),
    ({"start_sample": -1}, "start_sample must be at least 0"),
    ({"seed": 1.5}, "seed must be an integer"),
])
def test_sampler_refuses_bad_arguments(kwargs, message):
    kwargs = {"num_replicas": 1, "rank": 0, **kwargs}
    with pytest.raises(DataError, match=message):
        WindowSampler(10, **kwargs)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("L", [0, 2])
def test_too_short_windows_are_refused(shard_dir, L):
    with pytest.raises(DataError, match=f"max_seq_len {L} is too small.*--max_seq_length 3 or more"):
        WindowDataset(shard_dir, L)


def test_windows_longer_than_the_tokenizer_allows_are_refused(tmp_path):
    directory = write_shard_dir(tmp_path / "s", [[11, 12]], model_max_length=512)
    WindowDataset(directory, 512)
    with pytest.raises(DataError) as e:
        WindowDataset(directory, 1024)
    assert "max_seq_len 1024 exceeds the tokenizer's maximum 512 (model_max_length in" in str(e.value)
    assert "manifest.json" in str(e.value) and "use --max_seq_length 512 or less" in str(e.value)


@pytest.mark.parametrize("sentinel", [int(1e30), 1e30, None])
def test_unbounded_tokenizers_set_no_limit(tmp_path, sentinel):
    directory = write_shard_dir(tmp_path / "s", [[11, 12]], model_max_length=sentinel)
    assert len(WindowDataset(directory, 4096)) == 1


def test_a_manifest_without_shards_is_refused(tmp_path):
    directory = write_shard_dir(tmp_path / "empty", [])  # the writer makes it: an empty stream
    with pytest.raises(ShardError, match=f"^{re.escape(str(directory))} holds no shards: .*re-run tools/pretokenize"):
        WindowDataset(directory, 8)
    with pytest.raises(ShardError, match="holds no shards"):
        ShardSet(directory)


def test_truncated_shard_is_named_on_open(tmp_path, docs):
    directory = write_shard_dir(tmp_path / "s", docs, shard_tokens=64)
    victim = directory / "shard-00001.bin"
    victim.write_bytes(victim.read_bytes()[:-2])
    with pytest.raises(ShardError, match=r"shard-00001\.bin has \d+ bytes .* truncated"):
        WindowDataset(directory, 8)


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_caught_by_default(tmp_path, docs):
    directory = write_shard_dir(tmp_path / "s", docs, shard_tokens=64)
    flip_a_byte(directory / "shard-00002.bin")
    WindowDataset(directory, 8, verify=False)  # the opt-out: same size, only the checksum can tell
    message = (r"shard-00002\.bin has sha256 [0-9a-f]+ but the manifest says .* rebuild the shards with "
               "tools/pretokenize")
    with pytest.raises(ShardError, match=message):
        WindowDataset(directory, 8)  # the default: small shards are verified
    with pytest.raises(ShardError, match=message):
        WindowDataset(directory, 8, verify=True)
    with pytest.raises(ShardError, match=message):
        WindowDataset(ShardSet(directory), 8)


def test_shards_over_the_default_limit_are_verified_only_when_asked(tmp_path, docs, monkeypatch, capsys):
    import distill.data as D

    directory = write_shard_dir(tmp_path / "s", docs, shard_tokens=64)
    flip_a_byte(directory / "shard-00001.bin")
    monkeypatch.setattr(D, "VERIFY_BYTES_LIMIT", ShardSet(directory).num_bytes - 1)
    WindowDataset(directory, 8)
    out = capsys.readouterr().out
    assert out.startswith(f"note: the 0.0 GiB of shards in {directory} are over the 0 GiB verified by default: their "
                          "checksums are not verified (pass --verify_data") and out.count("\n") == 1
    with pytest.raises(ShardError, match=r"shard-00001\.bin has sha256"):
        WindowDataset(directory, 8, verify=True)
    monkeypatch.setattr(D, "VERIFY_BYTES_LIMIT", ShardSet(directory).num_bytes)
    with pytest.raises(ShardError, match=r"shard-00001\.bin has sha256"):
        WindowDataset(directory, 8)


def test_an_id_outside_the_vocabulary_is_named_before_the_embedding(tmp_path, docs):
    directory = write_shard_dir(tmp_path / "s", docs + [[12, 305, 13]], shard_tokens=64)  # vocabulary: 300 ids
    last = ShardSet(directory).shards[-1]
    assert last["max_id"] == 305  # recorded at write time
    with pytest.raises(ShardError, match=rf"{last['file']}: token id 305 at token offset \d+ .* outside the vocabulary "
                                         r"of 300 ids .*\(the shard's largest id is 305\)"):
        WindowDataset(directory, 8)  # verified by default: the real ids are read
    ds = WindowDataset(directory, 8, verify=False)  # not verified: the window holding it says so when read
    with pytest.raises(ShardError, match=rf"{last['file']}: token id 305 at token offset \d+ .* outside the vocab"):
        for i in range(len(ds)):
            ds[i]


def test_check_compatible_checks_each_shards_largest_id_against_the_embedding_rows(tmp_path, docs):
    from transformers import BertConfig

    directory = write_shard_dir(tmp_path / "s", docs + [[12, 299, 13]], shard_tokens=64)
    shards = ShardSet(directory)
    last = shards.shards[-1]["file"]
    check_compatible(shards, BertConfig(vocab_size=300))
    edited = {**shards.manifest, "shards": [*shards.shards[:-1], {**shards.shards[-1], "max_id": 300}]}
    with pytest.raises(DataError, match=f"{last}: holds token ids up to 300 .*, but the model has 300 embedding rows"):
        check_compatible(edited, BertConfig(vocab_size=300))
    with pytest.raises(DataError, match="holds token ids up to 299"):
        check_compatible(WindowDataset(shards, 8), BertConfig(vocab_size=299, pad_token_id=PAD))


def test_verify_checks_the_recorded_largest_id(tmp_path, docs):
    import json

    directory = write_shard_dir(tmp_path / "s", docs, shard_tokens=64)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["shards"][0]["max_id"] += 1
    (directory / "manifest.json").write_text(json.dumps(manifest))
    ShardSet(directory)  # sizes only
    with pytest.raises(ShardError, match=r"shard-00000\.bin: its largest token id is \d+ but the manifest says"):
        ShardSet(directory, verify=True)


def test_verify_data_checks_checksums_and_ids_before_training(tmp_path, docs):
    from transformers import BertConfig

    from distill.config import DistillConfig
    from distill.preflight import build_dataset

    teacher = BertConfig(vocab_size=301, pad_token_id=PAD)  # a row for id 300: only the data check can tell
    directory = write_shard_dir(tmp_path / "s", docs + [[12, 300, 13]], shard_tokens=64)  # 300: past the vocabulary
    last = ShardSet(directory).shards[-1]["file"]
    for cfg in (DistillConfig(data=str(directory)), DistillConfig(data=str(directory), verify_data=True)):
        with pytest.raises(ShardError, match=f"{last}: token id 300 at token offset \\d+ .* outside the vocabulary of "
                                             "300"):
            build_dataset(cfg, teacher)  # verified by default (small shards), and with --verify_data
    victim = directory / last
    victim.write_bytes(bytes([victim.read_bytes()[0] ^ 1]) + victim.read_bytes()[1:])
    with pytest.raises(ShardError, match=f"{last} has sha256"):
        build_dataset(cfg, teacher)


# --------------------------------------------------------------------------- compatibility
def test_check_compatible_names_what_differs():
    from transformers import BertConfig

    info = {"name_or_path": "bert-base-cased", "vocab_size": 28996, "cls_token_id": 101, "sep_token_id": 102,
            "pad_token_id": 0, "mask_token_id": 103}
    check_compatible(info, BertConfig(vocab_size=28996))
    with pytest.raises(DataError) as e:
        check_compatible(info, BertConfig(vocab_size=28000, pad_token_id=1))
    msg = str(e.value)
    assert "'bert-base-cased'" in msg and "vocab_size: shards 28996, model 28000" in msg
    assert "pad_token_id: shards 0, model 1" in msg and "re-run tools/pretokenize.py" in msg
    with pytest.raises(DataError, match="sep_token_id: shards 102, model 3"):
        check_compatible(info, {**info, "sep_token_id": 3})


def test_check_compatible_with_a_tokenizer_and_a_model(tiny_tokenizer_dir):
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    info = {"name_or_path": "tiny", "vocab_size": len(tok), "cls_token_id": tok.cls_token_id,
            "sep_token_id": tok.sep_token_id, "pad_token_id": tok.pad_token_id, "mask_token_id": tok.mask_token_id}
    check_compatible(info, tok)
    with pytest.raises(DataError, match="(?s)mask_token_id: shards 7, model 4.*pretokenize"):
        check_compatible({**info, "mask_token_id": 7}, tok)
    padded = BertModel(BertConfig(vocab_size=len(tok) + 99, hidden_size=8, num_hidden_layers=1,
                                  num_attention_heads=1, intermediate_size=8))
    check_compatible(info, padded)  # an embedding table padded past the tokenizer has a row for every id
    model = BertModel(BertConfig(vocab_size=len(tok) - 1, hidden_size=8, num_hidden_layers=1,
                                 num_attention_heads=1, intermediate_size=8))
    with pytest.raises(DataError, match=f"vocab_size: shards {len(tok)}, model {len(tok) - 1}"):
        check_compatible(info, model)

