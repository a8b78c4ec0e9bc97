"""DeepSpeed's FusedAdam on CUDA, and torch's fused AdamW where it cannot be built (no nvcc, no ninja, ...).

No GPU here: the probe (`distill.config.fused_adam_problem`) is run against a faked toolchain (CUDA_HOME,
an nvcc script, shutil.which, the op builder), and the resolved DeepSpeed JSON is checked for
device_type "cuda" without any CUDA.
"""
from __future__ import annotations

import shutil

import pytest
import torch
from helpers import REPO

from distill import config as C
from distill.config import ConfigError, DistillConfig, load_deepspeed_json, resolve_deepspeed_config


class FakeBuilder:
    """What the probe asks of DeepSpeed's FusedAdamBuilder."""

    name = "fused_adam"

    def __init__(self, compatible: bool = True):
        self.compatible, self.error_log = compatible, None if compatible else "the GPU is too old"

    def absolute_name(self) -> str:
        return "deepspeed.ops.adam.fused_adam_op"

    def is_compatible(self, verbose: bool = False) -> bool:
        return self.compatible


@pytest.fixture
def toolchain(tmp_path, monkeypatch):
    """A complete JIT toolchain for torch built with CUDA 12.8: CUDA_HOME with an nvcc of release 12.8, ninja and
    c++ found, FusedAdam not prebuilt. Tests take pieces away."""
    import torch.utils.cpp_extension as cpp

    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.8, V12.8.93'\n")
    nvcc.chmod(0o755)
    monkeypatch.setattr(cpp, "CUDA_HOME", str(home))
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    tools = {"ninja": "/usr/bin/ninja", "c++": "/usr/bin/c++"}
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: tools.get(cmd))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(C, "_fused_adam_builder", lambda: (FakeBuilder(), False))
    return {"home": home, "nvcc": nvcc, "tools": tools}


def test_a_complete_toolchain_builds_fused_adam(toolchain):
    assert C.fused_adam_problem() is None


def test_without_nvcc_fused_adam_cannot_be_built(toolchain, monkeypatch):
    import torch.utils.cpp_extension as cpp

    monkeypatch.setattr(cpp, "CUDA_HOME", None)
    problem = C.fused_adam_problem()
    assert problem is not None and problem.startswith("nvcc not found")
    monkeypatch.setattr(cpp, "CUDA_HOME", str(toolchain["home"] / "runtime-only"))  # a CUDA_HOME without nvcc
    assert C.fused_adam_problem().startswith("nvcc not found")


def test_without_ninja_or_a_compiler_fused_adam_cannot_be_built(toolchain, monkeypatch):
    del toolchain["tools"]["ninja"]
    assert C.fused_adam_problem().startswith("ninja not found")
    toolchain["tools"]["ninja"] = "/usr/bin/ninja"
    monkeypatch.setenv("CXX", "g++-13")
    assert C.fused_adam_problem().startswith("no C++ compiler (g++-13 not found")


def test_without_the_python_headers_fused_adam_cannot_be_built(toolchain, tmp_path, monkeypatch):
    import sysconfig

    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"include": str(tmp_path / "no-headers")})
    assert C.fused_adam_problem() == "the Python headers are missing (Python.h: install python3-dev)"


def test_an_nvcc_of_another_cuda_major_version_cannot_build_it(toolchain):
    toolchain["nvcc"].write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    problem = C.fused_adam_problem()
    assert problem is not None and "CUDA 13.0" in problem and "CUDA 12.8" in problem


def test_a_prebuilt_fused_adam_needs_no_toolchain(toolchain, monkeypatch):
    import torch.utils.cpp_extension as cpp

    monkeypatch.setattr(cpp, "CUDA_HOME", None)
    monkeypatch.setattr(C, "_fused_adam_builder", lambda: (FakeBuilder(), True))
    assert C.fused_adam_problem() is None


def test_an_incompatible_builder_is_a_problem(toolchain, monkeypatch):
    monkeypatch.setattr(C, "_fused_adam_builder", lambda: (FakeBuilder(compatible=False), False))
    assert "the GPU is too old" in C.fused_adam_problem()


def test_the_real_builder_is_found():
    """The op builder API the probe uses exists in the installed DeepSpeed (on CPU: the CPU accelerator's)."""
    pytest.importorskip("deepspeed")
    builder, prebuilt = C._fused_adam_builder()
    assert builder.name == "fused_adam" and isinstance(prebuilt, bool)
    assert builder.absolute_name() == "deepspeed.ops.adam.fused_adam_op" and builder.is_compatible() in (True, False)


# --------------------------------------------------------------------------- the resolved DeepSpeed JSON
NO_NVCC = "nvcc not found (no CUDA toolkit: CUDA_HOME unset and no nvcc on PATH)"


def resolve(ds: dict, device_type: str = "cuda", notes: list | None = None) -> dict:
    return resolve_deepspeed_config(DistillConfig(), ds, world_size=1, device_type=device_type, notes=notes)[0]


def test_without_a_cuda_compiler_a_cuda_run_falls_back_to_torch_fused_adamw(toolchain, monkeypatch):
    import torch.utils.cpp_extension as cpp

    monkeypatch.setattr(cpp, "CUDA_HOME", None)  # the stock-torch GPU node: no CUDA toolkit
    for path in ("auto", REPO / "ds_configs/single_gpu_bf16.json", REPO / "ds_configs/zero3.json"):
        notes = []
        params = resolve(load_deepspeed_json(path), notes=notes)["optimizer"]["params"]
        assert params["torch_adam"] is True and params["fused"] is True, path
        assert notes == ["optimizer: DeepSpeed's FusedAdam cannot be built here: nvcc not found (no CUDA toolkit: "
                         "CUDA_HOME unset and no nvcc on PATH); training with torch.optim.AdamW(fused=True) "
                         "(set optimizer.params.torch_adam in the DeepSpeed JSON to choose)"], notes


def test_with_a_buildable_fused_adam_the_json_is_left_to_deepspeed(toolchain):
    notes = []
    params = resolve(load_deepspeed_json(REPO / "ds_configs/single_gpu_bf16.json"), notes=notes)["optimizer"]["params"]
    assert "torch_adam" not in params and "fused" not in params and notes == []


def test_the_probe_runs_only_where_fused_adam_would(monkeypatch):
    calls = []
    monkeypatch.setattr(C, "fused_adam_problem", lambda: calls.append(1) or NO_NVCC)
    notes = []
    assert resolve(load_deepspeed_json("auto"), "cpu", notes)["optimizer"]["params"]["torch_adam"] is True
    ds = load_deepspeed_json("auto")
    ds["optimizer"]["params"]["torch_adam"] = True  # the user's choice, on CUDA too
    assert "fused" not in resolve(ds, notes=notes)["optimizer"]["params"]
    ds = load_deepspeed_json("auto")
    ds["zero_optimization"] = {"stage": 2, "offload_optimizer": {"device": "cpu"}}  # DeepSpeedCPUAdam, not FusedAdam
    assert "torch_adam" not in resolve(ds, notes=notes)["optimizer"]["params"]
    ds = load_deepspeed_json("auto")
    ds["optimizer"]["type"] = "Lamb"
    assert "torch_adam" not in resolve(ds, notes=notes)["optimizer"]["params"]
    assert calls == [] and notes == []


def test_the_fallback_keeps_a_users_foreach_and_fused(monkeypatch):
    monkeypatch.setattr(C, "fused_adam_problem", lambda: NO_NVCC)
    ds = load_deepspeed_json("auto")
    ds["optimizer"]["params"]["foreach"] = True  # torch refuses fused together with foreach
    params = resolve(ds)["optimizer"]["params"]
    assert params["torch_adam"] is True and params["foreach"] is True and "fused" not in params
    ds = load_deepspeed_json("auto")
    ds["optimizer"]["params"]["fused"] = False
    assert resolve(ds)["optimizer"]["params"]["fused"] is False


def test_an_explicit_torch_adam_false_without_fused_adam_is_refused(monkeypatch):
    monkeypatch.setattr(C, "fused_adam_problem", lambda: NO_NVCC)
    ds = load_deepspeed_json(REPO / "ds_configs/single_gpu_bf16.json")
    ds["optimizer"]["params"]["torch_adam"] = False
    with pytest.raises(ConfigError) as e:
        resolve(ds)
    text = str(e.value)
    assert "sets optimizer.params.torch_adam to false" in text and "nvcc not found" in text
    # fix 1: make it buildable; fix 2: torch's fused AdamW
    assert "toolkit with nvcc, ninja and a C++ compiler" in text and "DS_BUILD_FUSED_ADAM=1" in text
    assert "remove optimizer.params.torch_adam" in text
    monkeypatch.setattr(C, "fused_adam_problem", lambda: None)
    assert resolve(ds)["optimizer"]["params"]["torch_adam"] is False


def test_deepspeed_passes_fused_on_to_torch_adamw(monkeypatch):
    """The resolved params go through DeepSpeed's own optimizer construction (DeepSpeedEngine's, on a stand-in
    engine): torch_adam picks torch.optim.AdamW and `fused` reaches it. (torch's fused AdamW also runs on CPU.)"""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.engine import DeepSpeedEngine

    monkeypatch.setattr(C, "fused_adam_problem", lambda: NO_NVCC)
    params = resolve(load_deepspeed_json("auto"))["optimizer"]["params"]

    class Engine:
        get_optimizer_configuration = DeepSpeedEngine.get_optimizer_configuration

        def optimizer_params(self):
            return params

        def optimizer_name(self):
            return "adamw"

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = DeepSpeedEngine._configure_basic_optimizer(Engine(), [weight])
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"] is True
    weight.grad = torch.ones(3)
    optimizer.step()
    assert torch.all(weight < 1)
