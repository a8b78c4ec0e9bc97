"""MiniLMv2Objective: teacher and student Q/K/V into the relation loss, gradients, training, validation."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import cpu_env
from torch import nn
from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

from distill import kernel_check
from distill.objective import MiniLMv2Objective
from distill.student import create_student
from distill.teacher import FrozenTeacher

VOCAB = 99
QKV = {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}


def tiny_teacher(layers: int = 3, hidden: int = 32, heads: int = 4, teacher_layer: int | None = None) -> FrozenTeacher:
    # initializer_range 0.2: peaked attention, so relations carry signal at this size
    config = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden, max_position_embeddings=32, initializer_range=0.2)
    torch.manual_seed(0)
    return FrozenTeacher(BertModel(config), teacher_layer or layers)


def make_batch(token_types: bool = False):
    torch.manual_seed(1)
    ids = torch.randint(5, VOCAB, (4, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[3, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        types = torch.zeros_like(ids)
        types[:, 6:] = 1
        batch["token_type_ids"] = types
    return batch


@pytest.mark.parametrize("token_types", [False, True])
def test_exact_copy_of_teacher_gives_zero_loss(token_types):
    teacher = tiny_teacher()
    student = create_student(teacher, 3, 32, 4).eval()  # same shape: an exact copy; eval: no dropout
    objective = MiniLMv2Objective(teacher, student, num_relation_heads=8, relations=QKV)
    loss, parts = objective(make_batch(token_types))
    assert set(parts) == {"qq", "kk", "vv"}
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert abs(loss.item()) < 1e-6


def test_random_student_loss_is_finite_and_positive():
    teacher = tiny_teacher()
    student = create_student(teacher, 2, 16, 2, init="random")
    objective = MiniLMv2Objective(teacher, student, num_relation_heads=4, relations=QKV)
    loss, parts = objective(make_batch())
    assert torch.isfinite(loss) and loss.item() > 0.01
    assert all(torch.isfinite(p) and p.item() > 0 for p in parts.values())
    torch.testing.assert_close(loss, sum(parts.values()))


def grads_of(module: nn.Module) -> dict[str, torch.Tensor | None]:
    return {name: p.grad for name, p in module.named_parameters()}


@pytest.mark.parametrize("student_layer_index", [None, 2])
def test_gradients_reach_captured_layer_and_below_not_above_nor_teacher(student_layer_index):
    teacher = tiny_teacher()
    student = create_student(teacher, 3, 16, 2, init="random")
    objective = MiniLMv2Objective(teacher, student, num_relation_heads=4, relations=QKV,
                                  student_layer_index=student_layer_index)
    captured = (student_layer_index or 3) - 1  # 0-based
    loss, _ = objective(make_batch())
    loss.backward()

    projections = ("attention.self.query.", "attention.self.key.", "attention.self.value.")
    for name, grad in grads_of(student).items():
        index = int(name.split(".")[2]) if name.startswith("encoder.layer.") else None
        below = name.startswith("embeddings.") or (index is not None and index < captured)
        projection = index == captured and name.split(".", 3)[3].startswith(projections)
        if below or projection:
            assert grad is not None and grad.abs().sum() > 0, name
        else:  # the captured layer's attention output and feed-forward, layers above, the pooler
            assert grad is None, name
    assert all(not p.requires_grad and p.grad is None for p in teacher.model.parameters())


def test_sgd_steps_lower_the_loss_on_a_fixed_batch():
    teacher = tiny_teacher(layers=2)
    torch.manual_seed(1)
    student = create_student(teacher, 2, 16, 2, init="random").eval()
    objective = MiniLMv2Objective(teacher, student, num_relation_heads=4, relations=QKV)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    batch = make_batch()
    losses = []
    for _ in range(8):
        loss, _ = objective(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses


class Wrapper(nn.Module):
    """Stands in for a DeepSpeed engine: a different callable around the same module."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, **inputs):
        return self.module(**inputs)


def test_student_forward_through_a_wrapper_fires_the_same_hooks():
    teacher = tiny_teacher()
    student = create_student(teacher, 2, 16, 2, init="random").eval()
    objective = MiniLMv2Objective(teacher, student, num_relation_heads=4, relations=QKV)
    batch = make_batch()
    direct, _ = objective(batch)
    wrapped, _ = objective(batch, student_forward=Wrapper(student))
    torch.testing.assert_close(wrapped, direct)


def test_chunked_loss_matches_unchunked():
    teacher = tiny_teacher()
    student = create_student(teacher, 2, 16, 2, init="random").eval()
    batch = make_batch()
    results = []
    for chunk_size in (None, 5):
        student.zero_grad()
        objective = MiniLMv2Objective(teacher, student, num_relation_heads=4, relations=QKV, chunk_size=chunk_size)
        loss, _ = objective(batch)
        loss.backward()
        results.append((loss.detach(), student.encoder.layer[1].attention.self.key.weight.grad.clone()))
        objective.remove()
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-7)


def test_architecture_without_token_types_ignores_them():
    config = DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, initializer_range=0.2)
    teacher = FrozenTeacher(DistilBertModel(config), 2)
    student = create_student(teacher, 2, 32, 4).eval()
    objective = MiniLMv2Objective(teacher, student, num_relation_heads=4, relations={(1, 2): 1.0, (3, 3): 0.5})
    loss, parts = objective(make_batch(token_types=True))
    assert set(parts) == {"qk", "vv"} and abs(loss.item()) < 1e-6


def test_remove_takes_the_hooks_off():
    teacher = tiny_teacher()
    student = create_student(teacher, 2, 16, 2)
    before = len(student.encoder.layer[1].attention.self.query._forward_hooks)
    objective = MiniLMv2Objective(teacher, student, num_relation_heads=4, relations=QKV)
    assert len(student.encoder.layer[1].attention.self.query._forward_hooks) == before + 1
    objective.remove()
    assert len(student.encoder.layer[1].attention.self.query._forward_hooks) == before


# ----------------------------------------------------------------------------- validation
def test_relation_heads_must_divide_both_widths():
    teacher = tiny_teacher(hidden=32)
    student = create_student(teacher, 2, 24, 3)
    with pytest.raises(ValueError, match=r"num_relation_heads=16 does not divide the student's width \(24\): "
                                         r"choose a divisor of every width \(24, 32\), i.e. one of 1, 2, 4, 8$"):
        MiniLMv2Objective(teacher, student, num_relation_heads=16, relations=QKV)
    with pytest.raises(ValueError, match="num_relation_heads=0"):
        MiniLMv2Objective(teacher, student, num_relation_heads=0, relations=QKV)


def test_vocabularies_must_match():
    teacher = tiny_teacher()
    student = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=32))
    with pytest.raises(ValueError, match=r"teacher's vocabulary has 99 ids and the student's 50"):
        MiniLMv2Objective(teacher, student, num_relation_heads=4, relations=QKV)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(student_layer_index=0), r"student_layer_index=0 is out of range: the student has 2 layers; choose 1\.\.2"),
    (dict(student_layer_index=3), r"student_layer_index=3 is out of range"),
    (dict(relations={}), r"relations is empty: give \{\(m, n\): weight\} with at least one pair, m, n in 1\.\.3"),
    (dict(relations={(1, 4): 1.0}), r"m, n in 1\.\.3 \(1 = query, 2 = key, 3 = value\)"),
    (dict(chunk_size=0), r"chunk_size=0 must be a positive number of query rows \(e\.g\. 64 or 128\), or None"),
    (dict(relations="qq:x"), r"relation item 'qq:x': the weight must be a finite number >= 0"),
])
def test_argument_errors(kwargs, pattern):
    teacher = tiny_teacher()
    student = create_student(teacher, 2, 16, 2)
    kwargs = {"num_relation_heads": 4, "relations": QKV, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        MiniLMv2Objective(teacher, student, **kwargs)


def test_relations_as_text_like_the_command_line():
    teacher = tiny_teacher()
    student = create_student(teacher, 2, 16, 2)
    objective = MiniLMv2Objective(teacher, student, num_relation_heads=4, relations="qq:1,vv:0.5")
    assert dict(objective.spec.relations) == {(1, 1): 1.0, (3, 3): 0.5}
    loss, parts = objective(make_batch())
    assert torch.isfinite(loss) and sorted(parts) == ["qq", "vv"]


def test_teacher_must_be_frozen_teacher():
    teacher = tiny_teacher()
    student = create_student(teacher, 2, 16, 2)
    with pytest.raises(TypeError, match=r"FrozenTeacher\(model, teacher_layer\)"):
        MiniLMv2Objective(teacher.model, student, num_relation_heads=4, relations=QKV)


# ----------------------------------------------------------------------------- the real teacher
def test_real_teacher(teacher_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    enc = tokenizer(["MiniLMv2 distils self-attention relations.", "A shorter sentence."],
                    padding=True, return_tensors="pt")
    batch = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    teacher = FrozenTeacher(teacher_dir, 6)

    copy = create_student(teacher, 6, 384, 12).eval()
    loss, _ = MiniLMv2Objective(teacher, copy, num_relation_heads=48, relations=QKV)(batch)
    assert abs(loss.item()) < 1e-5

    torch.manual_seed(0)
    student = create_student(teacher, 2, 192, 6, init="random")
    loss, parts = MiniLMv2Objective(teacher, student, num_relation_heads=48, relations=QKV)(batch)
    assert torch.isfinite(loss) and loss.item() > 0.01
    loss.backward()
    assert student.encoder.layer[1].attention.self.value.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- a real DeepSpeed engine
DEEPSPEED_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch, deepspeed
    from transformers import BertConfig, BertModel
    from distill.objective import MiniLMv2Objective
    from distill.student import create_student
    from distill.teacher import FrozenTeacher

    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, initializer_range=0.2, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    teacher = FrozenTeacher(BertModel(config), 2)
    student = create_student(teacher, 2, 16, 2, init="random")
    # built before the engine, as the trainer does: the capture hooks come before DeepSpeed's
    objective = MiniLMv2Objective(teacher, student, num_relation_heads=4,
                                  relations={(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0})
    ids = torch.randint(5, 99, (4, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        direct = objective(batch)[0].item()
    deepspeed.init_distributed(dist_backend="gloo")
    engine, _, _, _ = deepspeed.initialize(model=student, model_parameters=student.parameters(), config={
        "train_micro_batch_size_per_gpu": 4, "optimizer": {"type": "SGD", "params": {"lr": 0.5}},
        "zero_optimization": {"stage": int(sys.argv[1])}, "zero_allow_untested_optimizer": True})
    losses = []
    for _ in range(4):
        loss, _ = objective(batch, student_forward=engine)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    print("RESULT " + json.dumps({"direct": direct, "losses": losses}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_through_a_deepspeed_engine_on_cpu(tmp_path, stage):
    """The hooks sit on the student module; the engine wraps it; losses match and go down."""
    pytest.importorskip("deepspeed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "engine.py"
    script.write_text(DEEPSPEED_SCRIPT)
    env = cpu_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    run = subprocess.run([sys.executable, str(script), str(stage)], env=env, capture_output=True, text=True,
                         timeout=300)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["losses"][0] == pytest.approx(result["direct"], rel=1e-5)
    assert result["losses"][-1] < result["losses"][0]


def test_relation_impl_choice_on_cpu(monkeypatch):
    from distill.relations import resolve_relation_impl

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.device("cpu")
    assert resolve_relation_impl("auto", cpu) == "chunked"  # the kernels never run on CPU tensors in training
    assert resolve_relation_impl("reference", cpu) == "reference"
    with pytest.raises(ValueError, match="relation_impl=triton cannot run here: .*; use relation_impl=chunked"):
        resolve_relation_impl("triton", cpu)
    with pytest.raises(ValueError, match="relation_impl='fast': choose one of auto, chunked, reference, triton"):
        resolve_relation_impl("fast", cpu)
    teacher = tiny_teacher()
    student = create_student(teacher, 2, 16, 2, init="random")
    objective = MiniLMv2Objective(teacher, student, num_relation_heads=4, relations=QKV, chunk_size=5,
                                  relation_impl="reference")
    assert objective.chunk_size is None and objective.relation_impl == "reference"


def test_triton_impl_through_the_objective_matches_chunked_in_the_interpreter(tmp_path):
    pytest.importorskip("triton")  # runs in a child: TRITON_INTERPRET must be set before triton is imported
    script = textwrap.dedent("""
        import torch
        from test_objective import tiny_teacher, make_batch, QKV
        from distill.objective import MiniLMv2Objective
        from distill.student import create_student
        teacher = tiny_teacher()
        student = create_student(teacher, 2, 16, 2, init="random").eval()
        out = []
        for impl in ("chunked", "triton"):
            student.zero_grad()
            objective = MiniLMv2Objective(teacher, student, num_relation_heads=4, relations=QKV, chunk_size=5,
                                          relation_impl=impl)
            assert objective.relation_impl == impl
            check = objective.kernel_check     # the kernel proved itself against the chunked loss first
            assert (check is None) if impl == "chunked" else check.ok, check
            loss, parts = objective(make_batch())
            loss.backward()
            out.append((loss.detach(), student.encoder.layer[1].attention.self.query.weight.grad.clone()))
            objective.remove()
        torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-4, atol=1e-7)
        print("MATCH", float(out[0][0]))
    """)
    from helpers import REPO

    env = cpu_env(TRITON_INTERPRET="1")
    # run in tests/: `python -c` puts its working directory first on the path, so test_objective imports
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO / "tests", env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "MATCH" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_relation_impl_follows_the_training_device_not_where_the_student_was_built(monkeypatch):
    import distill.kernels as kernels

    monkeypatch.setattr(kernels, "available", lambda device=None: torch.device(device).type == "cuda")
    checked = []   # the kernel's self-check runs on the training device, with the run's shapes and dtypes

    def passing_check(spec, widths, device, dtype, teacher_dtype):
        checked.append((widths, str(device), dtype, teacher_dtype))
        return kernel_check.SelfCheckResult(True, "", 0.01, 0.0, 0.0, 1e-4, 1.6e-2, str(device), "")

    monkeypatch.setattr(kernel_check, "self_check", passing_check)
    teacher = tiny_teacher()
    student = create_student(teacher, 2, 16, 2, init="random")  # built on CPU, as before deepspeed.initialize
    objective = MiniLMv2Objective(teacher, student, num_relation_heads=4, relations=QKV, chunk_size=5,
                                  relation_impl="auto", device="cuda:0", student_dtype=torch.bfloat16)
    assert objective.relation_impl == "triton" and objective.kernel_check.ok
    assert checked == [((32, 16), "cuda:0", torch.bfloat16, torch.float32)]
    objective.remove()
    objective = MiniLMv2Objective(teacher, student, num_relation_heads=4, relations=QKV, chunk_size=5,
                                  relation_impl="auto")
    assert objective.relation_impl == "chunked" and objective.kernel_check is None
    assert len(checked) == 1
