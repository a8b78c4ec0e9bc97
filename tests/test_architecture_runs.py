"""DeBERTa-v3 and ModernBERT end to end: their own tokenizers, shards, 2-rank DeepSpeed runs (gloo, CPU) with
resume, the export as base and classification model, a fine-tuning evaluation, and what the CLI refuses."""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, WORDS, free_port
from helpers import RUN_ENV as ENV
from test_distill_run import run_deepspeed

from distill.cli_args import flag

# multi-process DeepSpeed runs of two families, about 1.5 minutes in all: `make test-extended` (CI)
pytestmark = [pytest.mark.slow, pytest.mark.extended]

FAMILIES = ("deberta-v2", "modernbert")
SPECIALS = ("cls_token_id", "sep_token_id", "pad_token_id", "mask_token_id")
MAX_STEPS, SAVE_STEPS = 6, 3
LOCAL_WINDOW, POSITIONS = 16, 512


# --------------------------------------------------------------------------- tokenizers and teachers
def build_deberta_v3_tokenizer(directory: Path):
    """A DebertaV2Tokenizer (the `tokenizers` Unigram model behind DeBERTa-v3's SentencePiece vocabulary) over
    "▁word" pieces and single characters, the specials where DeBERTa-v3 has them: [PAD] 0, [CLS] 1, [SEP] 2,
    [UNK] 3, [MASK] last."""
    from transformers import DebertaV2Tokenizer

    words = sorted(set(WORDS))
    vocab = ([("[PAD]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[UNK]", 0.0)]
             + [(f"\u2581{w}", -math.log(len(words))) for w in words]
             + [(c, -10.0) for c in "\u2581abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-"] + [("[MASK]", 0.0)])
    tok = DebertaV2Tokenizer(vocab=vocab, unk_id=3, do_lower_case=True, model_max_length=POSITIONS)
    tok.save_pretrained(directory)
    return tok


def build_modernbert_tokenizer(directory: Path):
    """A byte-level BPE trained on the word list, its specials after the merges as in ModernBERT's own
    ([UNK] [CLS] [SEP] [PAD] [MASK]), and a post-processor adding [CLS] ... [SEP]."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    rng = random.Random(1)
    bpe.train_from_iterator([" ".join(rng.sample(WORDS, 20)) for _ in range(200)],
                            trainers.BpeTrainer(vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    bpe.add_special_tokens(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    cls, sep = bpe.token_to_id("[CLS]"), bpe.token_to_id("[SEP]")
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                  pad_token="[PAD]", mask_token="[MASK]", model_max_length=POSITIONS)
    tok.save_pretrained(directory)
    return tok


def save_teacher(family: str, directory: Path) -> None:
    """A randomly initialised 3-layer, 32-wide teacher of `family` saved with its tokenizer."""
    from transformers import DebertaV2Config, DebertaV2Model, ModernBertConfig, ModernBertModel

    torch.manual_seed(0)
    if family == "deberta-v2":
        tok = build_deberta_v3_tokenizer(directory)
        model = DebertaV2Model(DebertaV2Config(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=POSITIONS, relative_attention=True, position_buckets=16,
            norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
            type_vocab_size=0, pad_token_id=tok.pad_token_id))
    else:
        tok = build_modernbert_tokenizer(directory)
        model = ModernBertModel(ModernBertConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
            local_attention=LOCAL_WINDOW, max_position_embeddings=POSITIONS, cls_token_id=tok.cls_token_id,
            sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id))
    model.save_pretrained(directory)


def pretokenize(tokenizer_dir: Path, corpus: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "tools/pretokenize.py", "--tokenizer_name", str(tokenizer_dir), "--input",
                             str(corpus), "--output_dir", str(out), "--num-workers", "1", "--shard-tokens", "2000"],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """ROOT/<family>/{teacher,shards} for both families, and ROOT/bert-shards made with the tiny BERT tokenizer."""
    root = tmp_path_factory.mktemp("architectures")
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) for _ in range(120)]
    (root / "corpus.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    jobs = []
    for family in FAMILIES:
        save_teacher(family, root / family / "teacher")
        jobs.append(pretokenize(root / family / "teacher", root / "corpus.txt", root / family / "shards"))
    jobs.append(pretokenize(tiny_tokenizer_dir, root / "corpus.txt", root / "bert-shards"))
    for job in jobs:
        output = job.communicate(timeout=300)[0]
        assert job.returncode == 0, output[-3000:]
    return root


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


# --------------------------------------------------------------------------- runs
def distill_args(teachers: Path, family: str, out: Path, **overrides) -> list[str]:
    args = {"teacher": teachers / family / "teacher", "data": teachers / family / "shards",
            "deepspeed_config": "ds_configs/cpu.json", "student_layer": 2, "student_hidden_size": 16,
            "student_attention_heads": 2, "num_relation_heads": 4, "max_seq_len": 32,
            "per_device_train_batch_size": 4, "learning_rate": 2e-3, "warmup_steps": 2, "max_steps": MAX_STEPS,
            "logging_steps": 3, "save_steps": SAVE_STEPS, "output_dir": out, "dataloader_num_workers": 0, "seed": 7}
    args.update(overrides)
    return [f"{flag(k)}={v}" for k, v in args.items() if v is not None]


def run_by_hand(args: list[str], ranks: int = 2, timeout: int = 300) -> None:
    """`ranks` processes started with RANK/WORLD_SIZE/MASTER_* (as torchrun does): no launcher in between."""
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "launch/distill.py", *args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**ENV, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(ranks),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for r in range(ranks)]
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-2000:] for log in logs)


@pytest.fixture(scope="module")
def runs(teachers, family, tmp_path_factory) -> tuple[Path, Path]:
    """(a straight run, a run resumed from its midway checkpoint): 2 ranks each, the same flags."""
    root = tmp_path_factory.mktemp(f"runs-{family}")
    straight, resumed = root / "straight", root / "resumed"
    run_deepspeed(distill_args(teachers, family, straight))
    midway = straight / "checkpoints" / f"step-{SAVE_STEPS:08d}"
    run_by_hand(distill_args(teachers, family, resumed, resume=midway))
    return straight, resumed


def student_weights(directory: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModel

    return AutoModel.from_pretrained(directory).state_dict()


# --------------------------------------------------------------------------- tests
def test_the_family_tokenizer_loads_and_its_special_ids_reach_the_manifest(teachers, family):
    from transformers import AutoConfig, AutoTokenizer, DebertaV2Tokenizer, PreTrainedTokenizerFast

    from distill.shards import ShardSet

    teacher = teachers / family / "teacher"
    tok, config = AutoTokenizer.from_pretrained(teacher), AutoConfig.from_pretrained(teacher)
    assert config.model_type == family and tok.is_fast
    assert isinstance(tok, DebertaV2Tokenizer if family == "deberta-v2" else PreTrainedTokenizerFast)
    ids = tok("the water is good")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and tok.unk_token_id not in ids
    manifest = ShardSet(teachers / family / "shards").tokenizer
    assert manifest["vocab_size"] == len(tok) == config.vocab_size
    assert {k: manifest[k] for k in SPECIALS} == {k: getattr(tok, k) for k in SPECIALS}
    for key in SPECIALS:  # what the config holds agrees
        assert getattr(config, key, None) in (None, manifest[key]), key
    bert = ShardSet(teachers / "bert-shards").tokenizer
    if family == "deberta-v2":  # DeBERTa-v3's own layout
        assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3)
        assert tok.mask_token_id == len(tok) - 1 and tok.convert_ids_to_tokens(ids)[1] == "\u2581the"
    else:  # after the BPE's merges, none where BERT (101/102) or the tiny BERT tokenizer has them
        assert all(manifest[k] >= len(tok) - 5 and manifest[k] not in (101, 102, bert[k]) for k in SPECIALS)
        assert (config.cls_token_id, config.sep_token_id, config.pad_token_id) == \
            (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)


def test_resumed_run_ends_with_the_straight_runs_weights(runs):
    straight, resumed = runs
    done = sorted(p.name for p in (straight / "checkpoints").glob("step-*") if (p / "COMPLETE").is_file())
    assert done == [f"step-{SAVE_STEPS:08d}", f"step-{MAX_STEPS:08d}"]
    a, b = student_weights(straight / "student"), student_weights(resumed / "student")
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, f"weights differ by {worst}"
    midway = torch.load(next((straight / "checkpoints" / f"step-{SAVE_STEPS:08d}").glob("*model_states.pt")),
                        map_location="cpu", weights_only=False)["module"]
    assert any(not torch.equal(midway[k].float(), a[k]) for k in a if k in midway)  # the second half trained


def test_export_loads_as_base_and_classification_model(teachers, family, runs):
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    student = runs[0] / "student"
    config, teacher = AutoConfig.from_pretrained(student), AutoConfig.from_pretrained(teachers / family / "teacher")
    assert (config.model_type, config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == \
        (family, 16, 2, 2)
    assert config.vocab_size == teacher.vocab_size and config.pad_token_id == teacher.pad_token_id
    if family == "deberta-v2":
        assert config.pooler_hidden_size == 16  # the classifier's pooler reads the student's width
        assert (config.relative_attention, config.position_buckets, config.position_biased_input) == (True, 16, False)
    else:
        assert config.layer_types == ["full_attention", "sliding_attention"]  # teacher layers 1 and 3
        assert config.local_attention == LOCAL_WINDOW
        assert (config.cls_token_id, config.sep_token_id) == (teacher.cls_token_id, teacher.sep_token_id)
    tok = AutoTokenizer.from_pretrained(student)
    batch = tok(["the water is good", "a long day"], padding=True, return_tensors="pt")
    base = AutoModel.from_pretrained(student).eval()
    assert base(**batch).last_hidden_state.shape == (2, batch["input_ids"].shape[1], 16)
    classifier = AutoModelForSequenceClassification.from_pretrained(student, num_labels=3).eval()
    logits = classifier(**batch).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny labelled CSV task: label 1 when the sentence holds "good"."""
    directory = tmp_path_factory.mktemp("task")
    rng = random.Random(0)
    paths = []
    for split, n in (("train", 32), ("dev", 16)):
        lines = ["sentence,label"]
        for i in range(n):
            words = [w for w in rng.sample(WORDS, 6) if w != "good"] + (["good"] if i % 2 else [])
            rng.shuffle(words)
            lines.append(f"{' '.join(words)},{i % 2}")
        paths.append(directory / f"{split}.csv")
        paths[-1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths[0], paths[1]


def test_evaluation_fine_tunes_the_exported_student(family, runs, task_files, tmp_path, capsys):
    from distill.evaluation import cli

    train, dev = task_files
    out = tmp_path / "results"
    status = cli.main([str(runs[0] / "student"), "--train_file", str(train), "--validation_file", str(dev),
                       "--task_name", "tiny", "--text_fields", "sentence", "--metrics", "accuracy", "f1",
                       "--learning_rate", "1e-3", "--epochs", "1", "--seeds", "1", "--per_device_train_batch_size",
                       "8", "--per_device_eval_batch_size", "16", "--max_seq_length", "32", "--output_dir", str(out),
                       "--model_name", family])
    printed = capsys.readouterr()
    assert status == 0, printed.out[-3000:] + printed.err[-3000:]
    result = json.loads((out / family / "tiny" / "lr0.001_ep1_seed1" / "metrics.json").read_text())
    assert set(result["metrics"]) == {"accuracy", "f1"} and 0 <= result["metrics"]["accuracy"] <= 1
    assert result["train"]["examples"] == 32 and result["train"]["steps"] == 4
    assert result["eval_examples"] == {"validation": 16} and math.isfinite(result["train"]["loss"])
    assert f"| {family} |" in printed.out


# --------------------------------------------------------------------------- refused before any work
def refusals(teachers: Path, tmp_path: Path, cases: dict[str, dict]) -> dict[str, tuple[int, str, Path]]:
    """Each case a single-process `launch/distill.py` with the ModernBERT teacher, all at once: name ->
    (exit status, stderr, output dir)."""
    procs = {}
    for name, overrides in cases.items():
        out = tmp_path / name
        procs[name] = out, subprocess.Popen(
            [sys.executable, "launch/distill.py", *distill_args(teachers, "modernbert", out, **overrides)],
            cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found = {}
    for name, (out, proc) in procs.items():
        stderr = proc.communicate(timeout=300)[1]
        found[name] = proc.returncode, stderr, out
    return found


def test_bad_input_for_a_modernbert_teacher_is_refused_before_any_run_file(teachers, tmp_path):
    from transformers import AutoConfig

    from distill.shards import ShardSet

    config = AutoConfig.from_pretrained(teachers / "modernbert" / "teacher")
    found = refusals(teachers, tmp_path, {
        "bert-shards": {"data": teachers / "bert-shards"},
        "shorter-than-window": {"max_seq_len": LOCAL_WINDOW - 1},
        "beyond-positions": {"max_seq_len": POSITIONS + 8},
    })
    for name, (status, stderr, out) in found.items():
        assert status == 2, f"{name}: {stderr[-3000:]}"
        assert stderr.count("error: ") == 1, f"{name}: {stderr[-3000:]}"
        assert not out.exists() or list(out.iterdir()) == [], name  # nothing written before every check passed
    err = found["bert-shards"][1]
    assert "the shards were built with tokenizer" in err and "does not match the model's config" in err, err
    for key, bert_id in (("cls_token_id", 2), ("sep_token_id", 3), ("pad_token_id", 0)):
        assert f"{key}: shards {bert_id}, model {getattr(config, key)}" in err, err
    # the model's embedding table (505 rows) has a row for each of the 239 ids: the special ids tell them apart
    assert ShardSet(teachers / "bert-shards").tokenizer["vocab_size"] < config.vocab_size
    assert "vocab_size" not in err and "re-run tools/pretokenize.py" in err
    assert (f"error: --max_seq_length {LOCAL_WINDOW - 1} is shorter than the local attention window of "
            f"{LOCAL_WINDOW} tokens") in found["shorter-than-window"][1]
    assert (f"error: --max_seq_length {POSITIONS + 8} exceeds the teacher's {POSITIONS} positions (modernbert); "
            f"use --max_seq_length {POSITIONS} or less") in found["beyond-positions"][1]


def test_a_deberta_v3_teacher_with_a_padded_embedding_table_takes_its_own_shards(teachers):
    from transformers import AutoConfig

    from distill.data import check_compatible
    from distill.shards import ShardSet

    manifest = ShardSet(teachers / "deberta-v2" / "shards").tokenizer
    config = AutoConfig.from_pretrained(teachers / "deberta-v2" / "teacher")
    config.vocab_size = manifest["vocab_size"] + 99  # as microsoft/deberta-v3-base: 128100 rows, 128001 tokens
    check_compatible(manifest, config)  # fits: the table has a row for every id of the shards
    config.vocab_size = manifest["vocab_size"] - 1
    with pytest.raises(ValueError, match="vocab_size: shards"):
        check_compatible(manifest, config)
