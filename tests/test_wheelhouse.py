"""Air-gapped GPU nodes: tools/wheelhouse.sh builds a folder of wheels, tools/install.sh --wheelhouse installs from it.

The fast tests use a fake wheelhouse (tiny wheels made here) and a venv with a stub torch: every bad input is
`error:` naming the missing folder, wheel or package, exit 2, and the venv is left as it was. The slow one
(marker `extended`, `make test-extended`, not in `make test`) downloads a real wheelhouse from the index
and installs distill from it with `--no-index` into a fresh venv that has only torch.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from helpers import REPO

INSTALL = REPO / "tools" / "install.sh"
WHEELHOUSE = REPO / "tools" / "wheelhouse.sh"
PYVER = f"{sys.version_info[0]}.{sys.version_info[1]}"


def offline_env(**extra: str) -> dict[str, str]:
    """pip without this machine's config: only the wheelhouse can supply a wheel."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def run(cmd: list, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or offline_env(), capture_output=True, text=True)


def fake_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel of NAME that needs REQUIRES."""
    dist = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n"
                                                                                 for r in requires)
    files = {f"{name}/__init__.py": f"__version__ = {version!r}\n", f"{dist}/METADATA": meta,
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{p},,\n" for p in [*files, f"{dist}/RECORD"])
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, text in files.items():
            zf.writestr(arcname, text)
    return path


def fake_wheelhouse(folder: Path, python_version: str = PYVER, with_datasets: bool = True) -> Path:
    """distill (needing torch, tqdm and datasets), tqdm and datasets, with a manifest as wheelhouse.sh writes it."""
    folder.mkdir()
    wheels = [fake_wheel(folder, "distill", "0.1.0", ("torch>=2.2", "tqdm>=4.66", "datasets>=2.18")),
              fake_wheel(folder, "tqdm", "4.70.1")]
    if with_datasets:
        wheels.append(fake_wheel(folder, "datasets", "5.2.0"))
    lines = [f"python-version: {python_version}", "platform: manylinux_2_28_x86_64", "requirement: distill",
             *(f"wheel: {w.name}" for w in wheels)]
    (folder / "wheelhouse.txt").write_text("\n".join(lines) + "\n")
    return folder


def venv_with_stub_torch(path: Path) -> Path:
    """A fresh venv whose only package is a stub torch (what a GPU node's CUDA torch stands for here)."""
    run([sys.executable, "-m", "venv", path]).check_returncode()
    stub = fake_wheel(path.parent, "torch", "2.5.0")
    run([path / "bin" / "python", "-m", "pip", "install", "-q", "--no-index", stub]).check_returncode()
    return path


def freeze(venv: Path) -> str:
    proc = run([venv / "bin" / "python", "-m", "pip", "freeze", "--all"])
    proc.check_returncode()
    return proc.stdout


@pytest.fixture(scope="module")
def stub_venv(tmp_path_factory) -> Path:
    return venv_with_stub_torch(tmp_path_factory.mktemp("venv") / "venv")


def test_install_missing_wheelhouse_folder(tmp_path):
    venv = tmp_path / "venv"
    proc = run(["bash", INSTALL, "--wheelhouse", tmp_path / "nowhere", venv])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error:" in proc.stderr and str(tmp_path / "nowhere") in proc.stderr and "tools/wheelhouse.sh" in proc.stderr
    assert not venv.exists()  # checked before anything is written


def test_install_folder_without_manifest(tmp_path, stub_venv):
    (tmp_path / "house").mkdir()
    before = freeze(stub_venv)
    proc = run(["bash", INSTALL, "--wheelhouse", tmp_path / "house", stub_venv])
    assert proc.returncode == 2 and "no wheelhouse.txt" in proc.stderr, proc.stderr
    assert freeze(stub_venv) == before


def test_install_wheelhouse_missing_a_listed_wheel(tmp_path, stub_venv):
    house = fake_wheelhouse(tmp_path / "house")
    (house / "tqdm-4.70.1-py3-none-any.whl").unlink()
    before = freeze(stub_venv)
    proc = run(["bash", INSTALL, "--wheelhouse", house, stub_venv])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error:" in proc.stderr and "tqdm-4.70.1-py3-none-any.whl" in proc.stderr
    assert freeze(stub_venv) == before


def test_install_wheelhouse_lacking_a_requirement(tmp_path, stub_venv):
    """The manifest is complete but a requirement has no wheel: pip's dry run says so before anything installs."""
    house = fake_wheelhouse(tmp_path / "house", with_datasets=False)
    before = freeze(stub_venv)
    proc = run(["bash", INSTALL, "--wheelhouse", house, stub_venv])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error:" in proc.stderr and "datasets" in proc.stderr and "nothing was installed" in proc.stderr
    assert freeze(stub_venv) == before  # tqdm and distill, which were there, are not installed either


def test_install_wheelhouse_for_another_python(tmp_path, stub_venv):
    house = fake_wheelhouse(tmp_path / "house", python_version="3.99")
    before = freeze(stub_venv)
    proc = run(["bash", INSTALL, "--wheelhouse", house, stub_venv])
    assert proc.returncode == 2 and "3.99" in proc.stderr and f"--python-version {PYVER}" in proc.stderr, proc.stderr
    assert freeze(stub_venv) == before


def test_install_wheelhouse_without_torch_removes_the_venv_it_made(tmp_path):
    """No torch and no offline way to get one: error, and the venv this run created is gone again."""
    house = fake_wheelhouse(tmp_path / "house")
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    if run([base, "-c", "import torch"]).returncode == 0:
        pytest.skip("the base interpreter has torch, which install.sh would reuse")
    proc = run(["bash", INSTALL, "--wheelhouse", house, venv], env=offline_env(PYTHON=base))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "has no torch" in proc.stderr and not venv.exists()


def test_install_bad_option(tmp_path):
    proc = run(["bash", INSTALL, "--wheelhouse"])
    assert proc.returncode == 2 and "--wheelhouse needs a folder" in proc.stderr


def test_install_from_fake_wheelhouse(tmp_path, stub_venv):
    """Last of the install tests: it installs into the shared venv, which the ones above left as it was."""
    house = fake_wheelhouse(tmp_path / "house")
    proc = run(["bash", INSTALL, "--wheelhouse", house, stub_venv])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installing distill offline" in proc.stdout
    installed = freeze(stub_venv)
    for line in ("distill==0.1.0", "tqdm==4.70.1", "datasets==5.2.0", "torch @ file:"):
        assert line in installed


@pytest.mark.parametrize("args, message", [
    (["--python-version", "3"], "is not a Python 3 version"),
    (["--platform", "many linux"], "is not a platform tag"),
])
def test_wheelhouse_bad_arguments(tmp_path, args, message):
    proc = run(["bash", WHEELHOUSE, tmp_path / "house", *args])
    assert proc.returncode == 2 and "error:" in proc.stderr and message in proc.stderr, proc.stderr
    assert not (tmp_path / "house").exists()


def test_wheelhouse_refuses_a_folder_with_files(tmp_path):
    house = tmp_path / "house"
    house.mkdir()
    (house / "mine.txt").write_text("keep")
    proc = run(["bash", WHEELHOUSE, house])
    assert proc.returncode == 2 and "not an empty folder" in proc.stderr, proc.stderr
    assert [p.name for p in house.iterdir()] == ["mine.txt"] and (house / "mine.txt").read_text() == "keep"


# --- slow: downloads from the index (make test-extended) -----------------------------------------------------------

def cpu_torch_wheel() -> Path | None:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True,
                         text=True).stdout
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    found = [w for d in out.split() for w in Path(d.removeprefix("file://")).glob(f"torch-*+cpu-{tag}-*.whl")]
    return sorted(found)[-1] if found else None


@pytest.mark.extended
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_wheelhouse_installs_distill_offline(tmp_path):
    torch_wheel = cpu_torch_wheel()
    if torch_wheel is None:
        pytest.skip("no CPU torch wheel in pip's find-links for the fresh venv")
    house = tmp_path / "house"
    t0 = time.monotonic()
    proc = run(["bash", WHEELHOUSE, house], env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    t_build = time.monotonic() - t0
    manifest = (house / "wheelhouse.txt").read_text().splitlines()
    assert f"python-version: {PYVER}" in manifest and "platform: manylinux_2_28_x86_64" in manifest
    wheels = [line.split(": ", 1)[1] for line in manifest if line.startswith("wheel: ")]
    assert sorted(p.name for p in house.glob("*.whl")) == sorted(wheels)
    names = {w.split("-")[0].lower() for w in wheels}
    assert {"distill", "deepspeed", "datasets", "transformers", "pytest"} <= names
    assert not {"torch", "triton"} & names and not [n for n in names if n.startswith("nvidia_")]
    assert not list(tmp_path.glob(".house.tmp-*"))

    # a GPU node's environment: torch (and the triton a CUDA torch brings), nothing else
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv]).check_returncode()
    proc = run([venv / "bin" / "python", "-m", "pip", "install", "-q", torch_wheel, "triton"], env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    t1 = time.monotonic()
    proc = run(["bash", INSTALL, "--wheelhouse", house, venv])  # pip without this machine's indexes or find-links
    assert proc.returncode == 0, proc.stdout + proc.stderr
    t_install = time.monotonic() - t1
    proc = run([venv / "bin" / "python", "-c", "import distill, deepspeed, datasets; print(distill.__file__)"],
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith(str(venv))  # the wheel, not the checkout
    print(f"wheelhouse: {len(wheels)} wheels built in {t_build:.0f} s, installed offline in {t_install:.0f} s")


@pytest.mark.extended
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheelhouse_for_an_unsatisfiable_platform(tmp_path):
    house = tmp_path / "house"
    proc = run(["bash", WHEELHOUSE, house, "--platform", "linux_armv6l"], env=dict(os.environ))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error:" in proc.stderr and "finds no wheel of torch" in proc.stderr, proc.stderr
    assert not house.exists() and not list(tmp_path.glob(".house.tmp-*"))
