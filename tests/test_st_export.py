"""The student exported as a sentence-transformers model (distill.sentence_transformers_io, distill.export).

Tiny sentence-transformers teachers are built here (a 32-wide BERT + Pooling + Normalize, and one with a Dense),
their modules read as a run reads them at its start, kept in a run's student_config beside a stage-0 checkpoint of a
tiny student, and exported with `distill-export`; the result is loaded back with SentenceTransformer and AutoModel.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import REPO, cpu_env, save_tiny_teacher, write_shard_dir

from distill import checkpoint as ckpt
from distill import sentence_transformers_io as st_io
from distill.cli_args import flag
from distill.export import EXPORT_MARKER, export_checkpoint, main, save_student_skeleton

pytest.importorskip("sentence_transformers")
SENTENCES = ["the old man read the long sentence", "two boys play in the water"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tiny_tokenizer_dir):
    """{"plain": a BERT (width 32), "st": Transformer + mean Pooling + Normalize with a dot similarity and a prompt,
    "dense": Transformer + mean Pooling + Dense 32 -> 8 + Normalize}, saved by SentenceTransformer.save."""
    from sentence_transformers import SentenceTransformer, models

    root = tmp_path_factory.mktemp("st_teachers")
    plain = save_tiny_teacher(root / "plain", tiny_tokenizer_dir)
    for name, dense in (("st", None), ("dense", 8)):
        torch.manual_seed(1)
        transformer = models.Transformer(str(plain), max_seq_length=48)
        head = [models.Pooling(32, pooling_mode="mean")]
        if dense:
            head.append(models.Dense(in_features=32, out_features=dense))
        st = SentenceTransformer(modules=[transformer, *head, models.Normalize()], device="cpu",
                                 similarity_fn_name="dot", prompts={"query": "query: "})
        st.save(str(root / name))
    return {"plain": plain, "st": root / "st", "dense": root / "dense"}


def make_run(run_dir, teacher, export_format="auto", width=16, hidden_layers=1):
    """A run as distill leaves it, reading `teacher`'s modules as its start does: student_config (with them) and one
    complete stage-0 checkpoint (step 2) of a `width`-wide student."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(teacher)
    config = BertConfig(vocab_size=len(tok), hidden_size=width, num_hidden_layers=hidden_layers, num_attention_heads=2,
                        intermediate_size=2 * width, max_position_embeddings=64)
    modules = st_io.read_teacher_modules(str(teacher), export_format, teacher_width=32)
    run_dir.mkdir(parents=True)
    save_student_skeleton(BertModel(config), tok, run_dir / "student_config", modules)
    torch.manual_seed(2)
    tag = ckpt.checkpoints_dir(run_dir) / ckpt.tag_for_step(2)
    tag.mkdir(parents=True)
    torch.save({"module": BertModel(config).state_dict()}, tag / "mp_rank_00_model_states.pt")
    ckpt.mark_complete(tag, {"state": dataclasses.asdict(ckpt.TrainState(step=2)), "config": {},
                             **ckpt.file_records(tag)})
    return run_dir


def load_st(directory):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(directory), device="cpu", local_files_only=True)


def files_under(directory):
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def module_kinds(directory):
    return [st_io.kind_of(e) for e in json.loads((directory / "modules.json").read_text())]


# --------------------------------------------------------------------------- round trip
def test_a_sentence_transformers_teacher_gives_a_sentence_transformers_student(teachers, tmp_path, capsys):
    from transformers import AutoModel

    teacher = shutil.copytree(teachers["st"], tmp_path / "teacher")
    run = make_run(tmp_path / "run", teacher)
    shutil.rmtree(teacher)  # read at the start of the run: the export needs no teacher
    out = tmp_path / "student"
    assert main([str(run), "--output_dir", str(out)]) == 0
    assert "note:" not in capsys.readouterr().out

    model = load_st(out)
    vectors = model.encode(SENTENCES, convert_to_tensor=True)
    assert vectors.shape == (2, 16)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)  # the teacher's Normalize
    assert model.similarity_fn_name == "dot" and model.prompts["query"] == "query: "
    assert module_kinds(out) == ["Transformer", "Pooling", "Normalize"]
    st_config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert set(st_config["__version__"]) == {"sentence_transformers", "transformers", "pytorch"}

    saved = torch.load(run / "checkpoints" / "step-00000002" / "mp_rank_00_model_states.pt")["module"]
    weights = AutoModel.from_pretrained(out).state_dict()  # the plain view of the same directory
    assert all(torch.equal(v, saved[k]) for k, v in weights.items() if k in saved)
    with torch.no_grad():  # the sentence vector is the student encoder's mean token, normalised
        features = model.tokenize(SENTENCES[:1])
        tokens = AutoModel.from_pretrained(out)(**features).last_hidden_state[0]
    assert torch.allclose(vectors[0], torch.nn.functional.normalize(tokens.mean(0), dim=0), atol=1e-5)

    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["layout"] == "sentence-transformers"
    assert marker["files"] == [f for f in files_under(out) if f != EXPORT_MARKER]
    assert "1_Pooling/config.json" in marker["files"] and "modules.json" in marker["files"]


def test_an_export_with_module_folders_is_recognised_and_guarded(teachers, tmp_path, capsys):
    run = make_run(tmp_path / "run", teachers["st"])
    out = tmp_path / "student"
    assert main([str(run), "--output_dir", str(out)]) == 0
    assert main([str(run), "--output_dir", str(out)]) == 0  # its own directory, folders included: replaced
    (out / "1_Pooling" / "notes.txt").write_text("mine")
    assert main([str(run), "--output_dir", str(out)]) == 2
    assert "holds files this export did not write (1_Pooling/notes.txt)" in capsys.readouterr().err
    assert (out / "1_Pooling" / "notes.txt").read_text() == "mine"
    (out / "1_Pooling" / "notes.txt").unlink()
    (out / "extra").mkdir()
    assert main([str(run), "--output_dir", str(out)]) == 2
    assert "holds files this export did not write (extra)" in capsys.readouterr().err


# --------------------------------------------------------------------------- Dense
def test_a_dense_module_is_carried_where_the_widths_allow_and_dropped_otherwise(teachers, tmp_path, capsys):
    from safetensors.torch import load_file

    wide = make_run(tmp_path / "wide", teachers["dense"], width=32)  # the teacher's width: the Dense fits
    assert main([str(wide), "--output_dir", str(tmp_path / "wide-student")]) == 0
    assert "note:" not in capsys.readouterr().out
    assert module_kinds(tmp_path / "wide-student") == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert load_st(tmp_path / "wide-student").encode(SENTENCES).shape == (2, 8)
    teacher_dense = load_file(teachers["dense"] / "2_Dense" / "model.safetensors")
    student_dense = load_file(tmp_path / "wide-student" / "2_Dense" / "model.safetensors")
    assert all(torch.equal(teacher_dense[k], student_dense[k]) for k in teacher_dense)

    narrow = make_run(tmp_path / "narrow", teachers["dense"], width=16)
    assert main([str(narrow), "--output_dir", str(tmp_path / "narrow-student")]) == 0
    out = capsys.readouterr().out
    assert "note: the teacher's Dense module 2_Dense (32 -> 8) is left out of the student: it takes 32 inputs, " \
           "the student's embedding before it has 16" in out
    assert module_kinds(tmp_path / "narrow-student") == ["Transformer", "Pooling", "Normalize"]
    vectors = load_st(tmp_path / "narrow-student").encode(SENTENCES, convert_to_tensor=True)
    assert vectors.shape == (2, 16) and torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)


def test_a_projection_is_written_as_a_dense_module_after_the_pooling(teachers, tmp_path):
    """The hook for a learned projection to the teacher's width: after it, the teacher's Dense fits again."""
    run = make_run(tmp_path / "run", teachers["dense"], width=16)
    projection = torch.randn(32, 16)
    out = export_checkpoint(run / "checkpoints" / "step-00000002", tmp_path / "student", projection=projection)
    assert module_kinds(out) == ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]
    model = load_st(out)
    assert torch.equal(model[2].linear.weight.detach(), projection) and model[2].linear.bias is None
    assert model.encode(SENTENCES).shape == (2, 8)
    with pytest.raises(ValueError, match="the projection takes 8 inputs but the student's pooled embedding has 16"):
        export_checkpoint(run / "checkpoints" / "step-00000002", tmp_path / "other", projection=torch.randn(32, 8))


# --------------------------------------------------------------------------- --export_format
def test_a_plain_teacher_gets_mean_pooling_only_when_asked(teachers, tmp_path):
    from transformers import AutoTokenizer

    assert st_io.read_teacher_modules(str(teachers["plain"]), "auto", 32) is None
    run = make_run(tmp_path / "run", teachers["plain"], export_format="sentence-transformers")
    assert main([str(run), "--output_dir", str(tmp_path / "st")]) == 0  # auto follows what the run kept
    assert module_kinds(tmp_path / "st") == ["Transformer", "Pooling"]
    pooling = json.loads((tmp_path / "st" / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 16 and pooling["pooling_mode_mean_tokens"] is True
    model = load_st(tmp_path / "st")
    assert model.encode(SENTENCES).shape == (2, 16) and model.similarity_fn_name == "cosine"
    assert model.max_seq_length == min(64, AutoTokenizer.from_pretrained(teachers["plain"]).model_max_length)

    plain_run = make_run(tmp_path / "plain-run", teachers["plain"])
    assert main([str(plain_run), "--output_dir", str(tmp_path / "hf")]) == 0
    assert not (tmp_path / "hf" / "modules.json").exists()
    assert main([str(plain_run), "--output_dir", str(tmp_path / "asked"),
                 "--export_format", "sentence-transformers"]) == 0
    assert module_kinds(tmp_path / "asked") == ["Transformer", "Pooling"]


def test_hf_gives_a_plain_export_of_a_sentence_transformers_teacher(teachers, tmp_path):
    assert st_io.read_teacher_modules(str(teachers["st"]), "hf", 32) is None
    run = make_run(tmp_path / "run", teachers["st"])
    assert main([str(run), "--output_dir", str(tmp_path / "student"), "--export_format", "hf"]) == 0
    assert files_under(tmp_path / "student") == sorted(
        [EXPORT_MARKER, "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])


def test_without_sentence_transformers_import_and_plain_exports_work(teachers, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if not installed
    run = make_run(tmp_path / "run", teachers["st"])  # auto: the teacher's files are read and kept without it
    assert main([str(run), "--output_dir", str(tmp_path / "st")]) == 0
    assert module_kinds(tmp_path / "st") == ["Transformer", "Pooling", "Normalize"]
    assert main([str(run), "--output_dir", str(tmp_path / "hf"), "--export_format", "hf"]) == 0
    assert main([str(run), "--output_dir", str(tmp_path / "asked"), "--export_format", "sentence-transformers"]) == 2
    assert "needs the sentence-transformers package, which is not installed: pip install 'distill[embeddings]'" \
        in capsys.readouterr().err
    assert not (tmp_path / "asked").exists()
    with pytest.raises(ValueError, match="use --export_format hf for a plain Hugging Face encoder"):
        st_io.read_teacher_modules(str(teachers["plain"]), "sentence-transformers", 32)


# --------------------------------------------------------------------------- bad input, before anything is written
def _with_module(teacher, directory, entry):
    shutil.copytree(teacher, directory)
    entries = json.loads((directory / "modules.json").read_text())
    (directory / "modules.json").write_text(json.dumps([*entries, {"idx": len(entries), **entry}]))
    return directory


def test_a_module_the_export_cannot_write_is_named(teachers, tmp_path):
    bad = _with_module(teachers["st"], tmp_path / "bad",
                       {"name": "3", "path": "3_WordWeights", "type": "sentence_transformers.models.WordWeights"})
    with pytest.raises(ValueError, match=r"has a module the export cannot reproduce: 3 \(sentence_transformers.models"
                                         r".WordWeights, in 3_WordWeights\).*use --export_format hf"):
        st_io.read_teacher_modules(str(bad), "auto", 32)
    assert st_io.read_teacher_modules(str(bad), "hf", 32) is None
    outside = _with_module(teachers["st"], tmp_path / "outside",
                           {"name": "3", "path": "../x", "type": "sentence_transformers.models.Normalize"})
    with pytest.raises(ValueError, match="has the path '../x', not a folder inside the model"):
        st_io.read_teacher_modules(str(outside), "auto", 32)


def test_a_run_refuses_a_teacher_module_it_cannot_export_before_writing(teachers, tmp_path):
    teacher = _with_module(teachers["st"], tmp_path / "teacher",
                           {"name": "3", "path": "3_LayerNorm", "type": "sentence_transformers.models.LayerNorm"})
    data = write_shard_dir(tmp_path / "shards", [[11, 12, 13]] * 4)
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "--teacher", str(teacher), "--data", str(data),
                           "--output_dir", str(tmp_path / "out"), "--deepspeed_config", "ds_configs/cpu.json",
                           "--max_seq_length", "32", "--student_hidden_size", "16", "--student_attention_heads", "2",
                           "--num_relation_heads", "4"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=cpu_env(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: the teacher {teacher} (a sentence-transformers model) has a module the export cannot reproduce: " \
           "3 (sentence_transformers.models.LayerNorm, in 3_LayerNorm)" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_a_run_asking_for_sentence_transformers_needs_it_installed(teachers, monkeypatch):
    """Checked with the teacher's modules, before any run file (the test above shows where)."""
    from transformers import AutoConfig

    from distill.config import ConfigError, DistillConfig
    from distill.preflight import teacher_modules

    cfg = DistillConfig(teacher=str(teachers["plain"]), export_format="sentence-transformers",
                        student_hidden_size=16, student_attention_heads=2, num_relation_heads=4)
    probe = AutoConfig.from_pretrained(teachers["plain"])
    assert module_kinds_of(teacher_modules(cfg, None, probe)) == ["Transformer", "Pooling"]
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"--export_format sentence-transformers needs the sentence-transformers "
                                          r"package, which is not installed: pip install 'distill\[embeddings\]'"):
        teacher_modules(cfg, None, probe)


def module_kinds_of(modules):
    return [st_io.kind_of(e) for e in modules.entries]


def test_the_export_format_is_a_checked_flag():
    from distill.config import ConfigError, DistillConfig

    assert DistillConfig(export_format="hf").export_format == "hf"
    with pytest.raises(ConfigError, match="--export_format 'st': choose auto, hf or sentence-transformers"):
        DistillConfig(export_format="st")


# --------------------------------------------------------------------------- the real offline teacher
def test_the_offline_teacher_all_minilm_layout_is_reproduced(teacher_dir, tmp_path):
    run = make_run(tmp_path / "run", teacher_dir, width=32)
    out = tmp_path / "student"
    assert main([str(run), "--output_dir", str(out)]) == 0
    assert module_kinds(out) == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 256
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 32 and pooling["pooling_mode_mean_tokens"] is True
    model = load_st(out)
    vectors = model.encode(SENTENCES, convert_to_tensor=True)
    assert vectors.shape == (2, 32) and torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)
    assert model.max_seq_length == 256


# --------------------------------------------------------------------------- a whole run
@pytest.mark.slow
def test_a_run_from_a_sentence_transformers_teacher_ends_with_one(teachers, tmp_path):
    import random

    from helpers import WORDS

    rng = random.Random(0)
    (tmp_path / "corpus.txt").write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(30))
                                                     for _ in range(40)) + "\n", encoding="utf-8")
    env = cpu_env(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run([sys.executable, "tools/pretokenize.py", "--tokenizer_name", str(teachers["dense"]), "--input",
                    str(tmp_path / "corpus.txt"), "--output_dir", str(tmp_path / "shards"), "--num-workers", "1"],
                   cwd=REPO, env=env, check=True, capture_output=True)
    out = tmp_path / "run"
    flags = {"teacher": teachers["dense"], "data": tmp_path / "shards", "deepspeed_config": "ds_configs/cpu.json",
             "student_layer": 1, "student_hidden_size": 16, "student_attention_heads": 2, "num_relation_heads": 4,
             "max_seq_len": 32, "per_device_train_batch_size": 4, "max_steps": 2, "save_steps": 0,
             "dataloader_num_workers": 0, "output_dir": out}
    proc = subprocess.run([sys.executable, "launch/distill.py", *(f"{flag(k)}={v}" for k, v in flags.items())],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "note: the teacher's Dense module 2_Dense (32 -> 8) is left out of the student" in proc.stdout
    assert module_kinds(out / "student") == ["Transformer", "Pooling", "Normalize"]
    vectors = load_st(out / "student").encode(SENTENCES, convert_to_tensor=True)
    assert vectors.shape == (2, 16) and torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)


def test_the_embedding_loss_takes_the_teachers_pooling_whatever_the_export_format(teachers):
    from transformers import AutoConfig

    from distill.config import ConfigError, DistillConfig
    from distill.preflight import _own_modules, embedding_spec

    for export_format in ("auto", "hf"):
        cfg = DistillConfig(teacher=str(teachers["st"]), export_format=export_format, embedding_loss="cosine")
        modules = _own_modules(cfg, None, AutoConfig.from_pretrained(teachers["st"]))
        assert embedding_spec(cfg, modules).pooling == "mean"
    cfg = DistillConfig(teacher=str(teachers["plain"]), embedding_loss="mse")
    with pytest.raises(ConfigError, match="--embedding_loss mse needs a pooling: .* give --pooling mean, cls or max"):
        embedding_spec(cfg, _own_modules(cfg, None, AutoConfig.from_pretrained(teachers["plain"])))
    cfg = DistillConfig(teacher=str(teachers["plain"]), embedding_loss="mse", pooling="cls")
    assert embedding_spec(cfg, None).pooling == "cls"
