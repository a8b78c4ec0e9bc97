"""What the tests share, in one place: paths, the environment of child processes, tiny models, tokenizers
and shard directories built on the spot, random padded batches, a free port. Fixtures are in conftest.py."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from distill import shards as S

REPO = Path(__file__).resolve().parents[1]


ASSETS = Path(os.environ.get("DISTILL_ASSETS", REPO / "assets"))


WORDS = (
    "the of and to a in is it you that he was for on are with as his they be at one have this from "
    "or had by word but what some we can out other were all there when up use your how said an each "
    "she which do their time if will way about many then them write would like so these her long make "
    "thing see him two has look more day could go come did number sound no most people my over know "
    "water than call first who may down side been now find any new work part take get place made live "
    "where after back little only round man year came show every good me give our under name very "
    "through just form sentence great think say help low line differ turn cause much mean before move "
    "right boy old too same tell does set three want air well also play small end put home read hand"
).split()


def cpu_env(**extra: str) -> dict[str, str]:
    """The environment of a child process these tests start (a `python` running distill, a launcher and its
    ranks): this one's, `extra` added, CUDA hidden and DeepSpeed's accelerator the CPU, so that the suite runs
    the same on a CPU machine and on a node of 1 or 8 GPUs (and `--num_gpus N` means N CPU ranks). Every
    subprocess launch in tests/ goes through it (tests/test_cpu_children.py checks).

    DeepSpeed's launcher sets CUDA_VISIBLE_DEVICES=0,1,... for its ranks even under DS_ACCELERATOR=cpu (its CPU
    accelerator's set_visible_devices_envs), so such ranks stay on the CPU only where the trainer picks its device
    by DeepSpeed's accelerator, not by torch.cuda.is_available() alone.
    """
    return {**os.environ, **extra, "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}


def build_tiny_tokenizer(directory: Path, lowercase: bool = True):
    """A real BertTokenizerFast over a ~200-word WordPiece vocabulary, saved to `directory`."""
    from transformers import BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-")
    # "a" is a word and a letter: ids stay contiguous
    vocab = list(dict.fromkeys(specials + sorted(set(WORDS)) + pieces))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    import inspect

    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers >= 5
        tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=lowercase,
                                model_max_length=128)
    else:
        tok = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=lowercase, model_max_length=128)
    tok.save_pretrained(directory)
    return tok


def save_tiny_teacher(directory: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A randomly initialised BERT teacher (3 layers, hidden 32, 64 positions) saved with the tiny tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    teacher = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64))
    teacher.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def write_shard_dir(directory: Path, docs: list[list[int]], *, vocab_size: int = 300, sep: int = 3, cls: int = 2,
                    pad: int = 0, mask: int = 4, model_max_length: int = 512, shard_tokens: int = 64,
                    dtype: str = "uint16", tokenizer_name: str = "tiny") -> Path:
    """Write `docs` (lists of ids) as a shard directory through the format's writer, shards closing
    at the first document boundary at or past `shard_tokens`; the tokenizer entry is made up."""
    tokenizer = {"name_or_path": tokenizer_name, "vocab_size": vocab_size, "cls_token_id": cls, "sep_token_id": sep,
                 "pad_token_id": pad, "mask_token_id": mask, "do_lower_case": True,
                 "model_max_length": model_max_length, "fingerprint": tokenizer_name}
    S.write_documents(directory, docs, tokenizer=tokenizer, dtype=dtype, shard_tokens=shard_tokens)
    return directory


# the environment of a `python launch/distill.py` or `deepspeed` child (CPU ranks, quiet, offline, one thread)
RUN_ENV = cpu_env(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                  TRANSFORMERS_OFFLINE="1")


def free_port() -> int:
    """A TCP port free on this host now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def padded_batch(vocab: int, rows: int, seq: int, padded: dict[int, int] | None = None, *, seed: int = 1,
                 zero_padding: bool = False):
    """(input_ids, attention_mask) of `rows` x `seq` random ids in [5, vocab), torch's global generator seeded with
    `seed`; `padded` maps a row to its first padded position (mask 0 from there; ids 0 too with `zero_padding`)."""
    import torch

    torch.manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, seq))
    mask = torch.ones_like(ids)
    for row, start in (padded or {}).items():
        mask[row, start:] = 0
        if zero_padding:
            ids[row, start:] = 0
    return ids, mask
