"""MFU: the peak FLOPs of a GPU from its exact name (no guess for an unknown one), and a step's FLOPs by hand."""
from __future__ import annotations

import pytest
import torch
from transformers import BertConfig

from distill.monitor import mfu_unknown_line, peak_flops, step_flops

CUDA = torch.device("cuda", 0)


@pytest.fixture
def gpu_named(monkeypatch):
    """Make torch.cuda.get_device_name say `name` (no GPU needed: nothing else of CUDA is touched)."""
    monkeypatch.delenv("DISTILL_PEAK_TFLOPS", raising=False)

    def name_it(name: str) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    return name_it


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.4), ("NVIDIA H200 NVL", 835.5),
    ("NVIDIA A100-SXM4-40GB", 312), ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100-PCIE-40GB", 312),
    ("NVIDIA A100 80GB PCIe", 312),
    ("NVIDIA RTX A6000", 154.8), ("NVIDIA A40", 149.7), ("NVIDIA L40S", 362.05), ("NVIDIA L40", 181.05),
    ("NVIDIA A10", 125), ("NVIDIA L4", 121), ("NVIDIA GeForce RTX 4090", 165.2), ("NVIDIA GeForce RTX 3090", 71),
    ("Tesla V100-SXM2-32GB", 125), ("Tesla V100-SXM2-16GB", 125), ("Tesla V100-PCIE-32GB", 112),
    ("Tesla V100S-PCIE-32GB", 130), ("Tesla T4", 65),
    (" NVIDIA  H100 PCIe ", 756.5),  # spaces normalised
])
def test_peak_flops_of_real_device_names(gpu_named, name, tflops):
    gpu_named(name)
    assert peak_flops(CUDA) == pytest.approx(tflops * 1e12)
    assert mfu_unknown_line(CUDA) is None


@pytest.mark.parametrize("name", [
    "NVIDIA RTX A4000",   # not an A40
    "NVIDIA A10G",        # not an A10 (nor an A100)
    "NVIDIA A100X",       # not an A100
    "NVIDIA H100",        # which H100? SXM, PCIe and NVL differ: no guess
    "NVIDIA H100 SXM5 64GB", "NVIDIA L40G", "NVIDIA L4 Ada", "NVIDIA GeForce RTX 4090 D", "NVIDIA GB200",
    "Tesla V100-SXM2-32GB-LS", "NVIDIA RTX A6000 Ada", "",
])
def test_an_unknown_gpu_has_no_peak_and_one_line_says_so(gpu_named, name):
    gpu_named(name)
    assert peak_flops(CUDA) is None
    assert mfu_unknown_line(CUDA) == (f"MFU not logged: the peak FLOPs of {name.strip()!r} are unknown; set "
                                      f"DISTILL_PEAK_TFLOPS to its dense bf16/fp16 tensor TFLOP/s to log it")


def test_the_override_wins_and_is_checked(gpu_named, monkeypatch):
    gpu_named("NVIDIA RTX A4000")
    monkeypatch.setenv("DISTILL_PEAK_TFLOPS", "76.7")
    assert peak_flops(CUDA) == pytest.approx(76.7e12) and mfu_unknown_line(CUDA) is None
    gpu_named("NVIDIA H100 80GB HBM3")
    assert peak_flops(CUDA) == pytest.approx(76.7e12)  # the user's figure (a capped clock, say) over the table's
    for bad in ("fast", "0", "-3", "nan", "inf"):
        monkeypatch.setenv("DISTILL_PEAK_TFLOPS", bad)
        with pytest.raises(ValueError, match=f"DISTILL_PEAK_TFLOPS={bad!r} is not a positive number of TFLOP/s"):
            peak_flops(CUDA)


def test_no_peak_and_no_line_off_cuda(gpu_named):
    gpu_named("NVIDIA RTX A4000")
    assert peak_flops(torch.device("cpu")) is None and mfu_unknown_line(torch.device("cpu")) is None


# --------------------------------------------------------------------------- FLOPs of a step, by hand
def test_step_flops_counts_the_teacher_up_to_its_qkv():
    """Teacher H=32, I=64 run to layer 2 of 3: layer 1 whole, layer 2 only its Q/K/V projections. Student: 2 layers
    of H=16, I=48, forward and backward. 3 relations. Batch 2 x 8 tokens."""
    teacher = BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)
    student = BertConfig(hidden_size=16, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2)
    b, s = 2, 8
    tokens = b * s
    # one whole layer per token: Q, K, V, output 4*H*H; MLP 2*H*I; scores and context 2*S*H; 2 FLOPs per MAC
    teacher_layer = 2 * (4 * 32 * 32 + 2 * 32 * 64 + 2 * 8 * 32)   # 2 * (4096 + 4096 + 512) = 17408
    teacher_qkv = 2 * 3 * 32 * 32                                  # 6144
    student_layer = 2 * (4 * 16 * 16 + 2 * 16 * 48 + 2 * 8 * 16)   # 2 * (1024 + 1536 + 256) = 5632
    relations = 3 * 2 * b * s * s * (32 + 4 * 16)                  # 73728
    expected = tokens * (teacher_layer + teacher_qkv) + 3 * tokens * 2 * student_layer + relations
    assert expected == 16 * 23552 + 3 * 16 * 11264 + 73728
    assert step_flops(teacher, student, 2, 3, b, s) == expected
    # the embedding loss runs the teacher to its end: all 3 layers whole
    assert step_flops(teacher, student, 3, 3, b, s, run_to_end=True) == expected + tokens * (2 * teacher_layer
                                                                                            - teacher_qkv)
