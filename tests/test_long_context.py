"""Long sequences: the unchunked loss's memory budget, windows at any length over one shard directory, the chunked
loss at S = 8192, and the training CLI's early refusals (budget, teacher positions, ModernBERT's local window)."""
from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, cpu_env, save_tiny_teacher, write_shard_dir

from distill.relations import UNCHUNKED_BUDGET_BYTES, RelationSpec, relation_loss

QKV = "qq:1,kk:1,vv:1"


# --------------------------------------------------------------------------- the budget
@pytest.mark.parametrize("relations, factor", [(QKV, 9), ("qq", 5), ("qk:1,vv:0.5", 7)])
def test_unchunked_bytes_counts_2r_plus_3_float32_matrices(relations, factor):
    for impl in ("reference", "chunked", "auto"):  # chunked / auto without a chunk size run in one piece
        assert RelationSpec(12, relations, impl).unchunked_bytes(2, 512) == factor * 2 * 12 * 512 * 512 * 4
    # the reference ignores a chunk size (the flag's default 128 comes along with --relation_impl reference)
    assert RelationSpec(12, relations, "reference", 128).unchunked_bytes(2, 512) == factor * 2 * 12 * 512 * 512 * 4
    for impl, chunk in (("chunked", 128), ("auto", 128), ("triton", None), ("triton", 64)):
        assert RelationSpec(12, relations, impl, chunk).unchunked_bytes(64, 8192) is None


def test_check_memory_refuses_an_unchunked_loss_over_the_budget():
    for impl in ("reference", "chunked", "auto"):
        spec = RelationSpec(4, QKV, impl)
        need = spec.unchunked_bytes(8, 4096)                       # 9 x 8 x 4 x 4096^2 x 4 = 18 GiB
        assert need == 18 * 2**30 > UNCHUNKED_BUDGET_BYTES
        with pytest.raises(ValueError) as e:
            spec.check_memory(8, 4096)
        message = str(e.value)
        assert "use relation_impl chunked with a chunk size" in message and "18.0 GiB" in message, message
        assert message.startswith("relation_impl=reference" if impl == "reference" else "an unchunked relation loss")
        assert spec.check_memory(4, 4096) is None                  # 9 GiB: within the budget
        # the length it suggests is the longest that fits
        fit = int(re.search(r"seq_len <= (\d+) at this batch size", message).group(1))
        assert spec.check_memory(8, fit) is None
        with pytest.raises(ValueError):
            spec.check_memory(8, fit + 1)
    spec = RelationSpec(4, "qq", "reference")
    need = spec.unchunked_bytes(1, 1000)
    assert spec.check_memory(1, 1000, budget=need) is None
    with pytest.raises(ValueError, match="relation_impl chunked"):
        spec.check_memory(1, 1000, budget=need - 1)


def test_check_memory_lets_the_linear_implementations_through():
    for impl, chunk in (("chunked", 128), ("chunked", 1), ("auto", 64), ("triton", None), ("triton", 128)):
        assert RelationSpec(48, QKV, impl, chunk).check_memory(256, 8192) is None
        assert RelationSpec(48, QKV, impl, chunk).check_memory(256, 8192, budget=0) is None


# --------------------------------------------------------------------------- windows at any length
@pytest.fixture(scope="module")
def long_shards(tmp_path_factory):
    """About 20,000 tokens of documents of 1..600 ids in 7 shards or so, readable at L <= 8192; and their stream."""
    rng = random.Random(0)
    docs, total = [], 0
    while total < 20_000:
        docs.append([rng.randrange(5, 300) for _ in range(rng.randint(1, 600))])
        total += len(docs[-1]) + 1
    directory = write_shard_dir(tmp_path_factory.mktemp("long") / "shards", docs, model_max_length=8192,
                                shard_tokens=3000)
    stream = np.concatenate([np.asarray(doc + [3]) for doc in docs])  # each document followed by SEP (3)
    return directory, stream


@pytest.mark.parametrize("length", [128, 2048, 8192])
def test_windows_at_any_length_cover_the_same_stream(long_shards, length):
    from distill.data import WindowDataset

    directory, stream = long_shards
    dataset = WindowDataset(directory, length)
    assert len(dataset.shards.shards) > 2                          # windows cross shard files
    assert len(dataset) == math.ceil(stream.size / (length - 2))
    assert length != 8192 or len(dataset) >= 2
    inner = []
    for i in range(len(dataset)):
        item = dataset[i]
        ids, mask = item["input_ids"], item["attention_mask"]
        assert ids.shape == mask.shape == (length,) and ids.dtype == torch.long
        n = int(mask.sum()) - 2
        assert 1 <= n <= length - 2 and (n == length - 2 or i == len(dataset) - 1)
        assert ids[0] == 2 and ids[n + 1] == 3 and bool((ids[n + 2:] == 0).all())  # CLS, SEP, padding
        assert bool((mask[:n + 2] == 1).all()) and bool((mask[n + 2:] == 0).all())
        inner.append(ids[1:n + 1].numpy())
    np.testing.assert_array_equal(np.concatenate(inner), stream)


# --------------------------------------------------------------------------- the chunked loss at S = 8192
@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two threads waiting on each other make these 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _relation_inputs(seq, gen, teacher_width=8, student_width=4, batch=1):
    teacher = [torch.randn(batch, seq, teacher_width, generator=gen) for _ in range(3)]
    student = [torch.randn(batch, seq, student_width, generator=gen).requires_grad_() for _ in range(3)]
    return teacher, student


def _loss_and_grads(teacher, student, mask, spec):
    for s in student:
        s.grad = None
    loss, parts = relation_loss(teacher, student, mask, spec)
    loss.backward()
    return loss.detach(), parts, [None if s.grad is None else s.grad.clone() for s in student]


def test_chunked_equals_reference_at_1024_with_padding(one_thread):
    gen = torch.Generator().manual_seed(1)
    teacher, student = _relation_inputs(1024, gen, batch=2)
    mask = torch.ones(2, 1024, dtype=torch.long)
    mask[1, 700:] = 0
    ref = _loss_and_grads(teacher, student, mask, RelationSpec(2, "qk:1,vv:0.5", "reference"))
    chunked = _loss_and_grads(teacher, student, mask, RelationSpec(2, "qk:1,vv:0.5", "chunked", 96))
    torch.testing.assert_close(chunked[0], ref[0], rtol=1e-5, atol=1e-7)
    for name in ref[1]:
        torch.testing.assert_close(chunked[1][name], ref[1][name], rtol=1e-5, atol=1e-7)
    for got, want in zip(chunked[2], ref[2], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)


def test_chunked_loss_at_8192_equals_the_loss_of_one_period(one_thread):
    """Inputs and mask repeated with period P: every row's softmax over S keys is its softmax over P keys, spread
    over S / P copies, so the loss at S equals the loss at P, and each gradient is P / S times the one at P. The
    reference at P = 64 is cheap; the chunked loss at S = 8192 runs chunks of 96 rows (the last one partial),
    which straddle the periods."""
    period, seq = 64, 8192
    copies = seq // period
    gen = torch.Generator().manual_seed(2)
    teacher, student = _relation_inputs(period, gen)
    mask = torch.ones(1, period, dtype=torch.long)
    mask[0, 40:47] = 0                                              # padding inside each period
    long_teacher = [t.repeat(1, copies, 1) for t in teacher]
    long_student = [s.detach().repeat(1, copies, 1).requires_grad_() for s in student]
    spec = dict(num_relation_heads=2, relations="qk")             # query rows != key columns: both gradients
    short = _loss_and_grads(teacher, student, mask, RelationSpec(**spec, impl="reference"))
    long = _loss_and_grads(long_teacher, long_student, mask.repeat(1, copies),
                           RelationSpec(**spec, impl="chunked", chunk_size=96))
    torch.testing.assert_close(long[0], short[0], rtol=2e-5, atol=0)
    for name in short[1]:
        torch.testing.assert_close(long[1][name], short[1][name], rtol=2e-5, atol=0)
    for got, want in zip(long[2][:2], short[2][:2], strict=True):
        torch.testing.assert_close(got * copies, want.repeat(1, copies, 1), rtol=1e-3, atol=1e-8)


# --------------------------------------------------------------------------- the CLI refuses before writing
def _save(model, tokenizer_dir: Path, directory: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tiny_tokenizer_dir):
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        ModernBertConfig,
        ModernBertModel,
        RobertaConfig,
        RobertaModel,
    )

    root = tmp_path_factory.mktemp("long_teachers")
    vocab = len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir))
    small = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    return {
        "bert": save_tiny_teacher(root / "bert", tiny_tokenizer_dir),     # 64 positions
        "bert4096": _save(BertModel(BertConfig(**small, max_position_embeddings=4096)), tiny_tokenizer_dir,
                          root / "bert4096"),
        "roberta": _save(RobertaModel(RobertaConfig(**small, max_position_embeddings=66, pad_token_id=1)),
                         tiny_tokenizer_dir, root / "roberta"),          # positions start after pad id 1: 64
        "modernbert": _save(ModernBertModel(ModernBertConfig(
            **{**small, "num_hidden_layers": 3}, max_position_embeddings=512, local_attention=128, pad_token_id=0,
            cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3)), tiny_tokenizer_dir, root / "modernbert"),
    }


CASES = {  # name: (teacher, flags, the error's text)
    "reference over budget": (
        "bert4096", ["--relation_impl", "reference", "--max_seq_length", "4096", "--per_device_train_batch_size", "8"],
        "error: --relation_impl reference: relation_impl=reference at seq_len 4096 would hold 18.0 GiB of "
        "[B, A_r, S, S] matrices per micro-batch of 8, over its budget of 16 GiB: use relation_impl chunked"),
    "chunked without a chunk size over budget": (
        "bert4096", ["--relation_impl", "chunked", "--relation_chunk_size", "0", "--max_seq_length", "4096",
                     "--per_device_train_batch_size", "8"],
        "error: --relation_impl chunked: an unchunked relation loss at seq_len 4096 would hold 18.0 GiB"),
    "auto without a chunk size over budget": (
        "bert4096", ["--relation_chunk_size", "0", "--max_seq_length", "4096", "--per_device_train_batch_size", "8"],
        "error: --relation_impl auto: an unchunked relation loss at seq_len 4096 would hold 18.0 GiB"),
    "bert positions": (
        "bert", ["--max_seq_length", "65"],
        "error: --max_seq_length 65 exceeds the teacher's 64 positions (bert); use --max_seq_length 64 or less"),
    "roberta positions": (
        "roberta", ["--max_seq_length", "65"],
        "error: --max_seq_length 65 exceeds the teacher's 64 positions (roberta); use --max_seq_length 64 or less"),
    "modernbert local window": (
        "modernbert", ["--max_seq_length", "64"],
        "error: --max_seq_length 64 is shorter than the local attention window of 128 tokens that the modernbert "
        "teacher and its student use in their local layers"),
}

# every case through launch/distill.py's own code, in one interpreter (imports once): exit status and stderr
_DRIVER = """
import contextlib, io, json, runpy, sys
script, results = sys.argv[1], []
for argv in json.loads(sys.argv[2]):
    err, code = io.StringIO(), 0
    sys.argv = [script, *argv]
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = e.code
    results.append([code, err.getvalue()])
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def refusals(tmp_path_factory, teachers):
    root = tmp_path_factory.mktemp("long_cli")
    data = write_shard_dir(root / "shards", [[11, 12, 13]] * 4)
    argvs = []
    for i, (teacher, flags, _) in enumerate(CASES.values()):
        argvs.append(["--teacher", str(teachers[teacher]), "--data", str(data), "--output_dir", str(root / f"out{i}"),
                      "--deepspeed_config", str(REPO / "ds_configs" / "cpu.json"), "--student_layer", "1",
                      "--student_hidden_size", "16", "--student_attention_heads", "2", "--num_relation_heads", "4",
                      *flags])
    env = cpu_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                  PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(REPO / "launch" / "distill.py"), json.dumps(argvs)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(lines[-1][len("RESULTS "):])
    return {name: (code, err, root / f"out{i}")
            for i, (name, (code, err)) in enumerate(zip(CASES, results, strict=True))}


@pytest.mark.parametrize("name", list(CASES))
def test_the_cli_refuses_with_exit_2_before_writing_anything(refusals, name):
    code, err, out = refusals[name]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and errors, err
    assert errors[0].startswith(CASES[name][2]), errors[0]
    assert not out.exists()


def test_the_same_settings_one_step_inside_the_limits_pass_the_checks(teachers, tmp_path):
    """The CLI cases' counterparts just inside each limit: check_teacher_fit lets them through."""
    from transformers import AutoConfig

    from distill.config import DistillConfig
    from distill.preflight import check_teacher_fit

    data = write_shard_dir(tmp_path / "shards", [[11, 12, 13]] * 4)
    common = dict(data=str(data), output_dir=str(tmp_path / "out"), student_layer=1, student_hidden_size=16,
                  student_attention_heads=2, num_relation_heads=4)
    passing = [
        ("bert4096", dict(relation_impl="reference", max_seq_len=4096, per_device_train_batch_size=4)),
        ("bert4096", dict(relation_impl="chunked", max_seq_len=4096, per_device_train_batch_size=8)),
        ("bert4096", dict(relation_impl="auto", max_seq_len=4096, per_device_train_batch_size=8)),
        ("bert", dict(max_seq_len=64)),
        ("roberta", dict(max_seq_len=64)),
        ("modernbert", dict(max_seq_len=128)),
    ]
    for teacher, settings in passing:
        cfg = DistillConfig(teacher=str(teachers[teacher]), **common, **settings)
        assert check_teacher_fit(cfg, AutoConfig.from_pretrained(teachers[teacher])) is None
    assert not (tmp_path / "out").exists()
