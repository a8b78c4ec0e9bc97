"""The suite is hermetic on GPU machines: every process a test starts runs on CPU (conftest.cpu_env).

A child that saw the node's GPUs would train on them (and `--num_gpus 2` on a 1-GPU node would fail), so the
same `make test` would pass on a CPU machine and fail, or measure something else, on a GPU node. This reads
the source of tests/*.py: every subprocess launch passes an `env` built by `cpu_env` (directly, or through a
name bound to one, in the file or imported from another), and no env puts CUDA_VISIBLE_DEVICES or
DS_ACCELERATOR back. Launches that start no torch code at all are listed in EXEMPT, with the reason.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from helpers import REPO, cpu_env

TESTS = REPO / "tests"
LAUNCHES = {"run", "Popen", "call", "check_call", "check_output"}  # subprocess.<these>
HIDDEN_KEYS = {"CUDA_VISIBLE_DEVICES", "DS_ACCELERATOR"}
EXEMPT = {  # file -> why its launches need no hidden CUDA
    "test_checkpoint.py": "mount and umount of a small tmpfs",
    "test_fetch_assets.py": "bash tools/fetch_offline_assets.sh: copies and unpacks files, runs no torch code",
    "test_wheelhouse.py": "pip and venv: builds and installs wheels, runs no torch code",
}
# Files of other owners whose launches do not go through cpu_env yet (see each file): the test fails once one of
# them does, so that its entry is removed here and the check covers it from then on.
PENDING: set[str] = set()  # test files not yet converted (none)


class Module:
    """One test file's imports and the values bound to each name anywhere in it (module or function scope)."""

    def __init__(self, path: Path):
        self.name, self.tree = path.name, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        self.bound: dict[str, list[ast.AST]] = {}
        self.from_imports: dict[str, tuple[str, str]] = {}  # local name -> (module, name there)
        self.module_aliases: dict[str, str] = {}  # local name -> module
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.bound.setdefault(target.id, []).append(node.value)
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    self.from_imports[alias.asname or alias.name] = (node.module, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    self.module_aliases[alias.asname or alias.name] = alias.name


class Scanner:
    """The test files of one folder, read once each."""

    def __init__(self, root: Path):
        self.root, self.modules = root, {}

    def module(self, name: str) -> Module | None:
        path = self.root / f"{name}.py"
        if name not in self.modules and path.is_file():
            self.modules[name] = Module(path)
        return self.modules.get(name)

    def binding_hidden(self, module: Module | None, name: str, seen: set) -> bool:
        if module is None or (module.name, name) in seen:
            return False
        seen.add((module.name, name))
        if name in module.from_imports:
            source, original = module.from_imports[name]
            return original == "cpu_env" or self.binding_hidden(self.module(source), original, seen)
        return any(self.hidden(module, value, seen) for value in module.bound.get(name, ()))

    def hidden(self, module: Module, expr: ast.AST, seen: set) -> bool:
        """Whether the env expression `expr` is (or is built from) a cpu_env(...) environment."""
        for node in ast.walk(expr):
            if isinstance(node, ast.Call):
                func = node.func
                if getattr(func, "id", None) == "cpu_env" or getattr(func, "attr", None) == "cpu_env":
                    return True
            elif isinstance(node, ast.Name) and self.binding_hidden(module, node.id, seen):
                return True
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in module.module_aliases
                  and self.binding_hidden(self.module(module.module_aliases[node.value.id]), node.attr, seen)):
                return True
        return False

    def unhidden_launches(self, name: str) -> list[str]:
        """`file:line: call` for each subprocess launch of tests/`name`.py whose child may see CUDA."""
        module = self.module(name)
        found = []
        for node in ast.walk(module.tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LAUNCHES and getattr(node.func.value, "id", None) == "subprocess"):
                continue
            if any(isinstance(arg, ast.Constant) and arg.value == "--help" for arg in ast.walk(node)):
                continue  # argparse prints and exits before any model or device
            env = next((k.value for k in node.keywords if k.arg == "env"), None)
            put_back = env is not None and any(isinstance(d, ast.Dict) and any(
                isinstance(k, ast.Constant) and k.value in HIDDEN_KEYS for k in d.keys) for d in ast.walk(env))
            if env is None or put_back or not self.hidden(module, env, set()):
                found.append(f"{module.name}:{node.lineno}: {ast.unparse(node)[:100]}")
        return found


def test_every_launch_in_the_tests_runs_on_cpu():
    scanner = Scanner(TESTS)
    found = {p.name: scanner.unhidden_launches(p.stem) for p in sorted(TESTS.glob("*.py")) if p.name not in EXEMPT}
    bad = [line for name, lines in found.items() if name not in PENDING for line in lines]
    assert not bad, "launch these through conftest.cpu_env (env=cpu_env(...)):\n" + "\n".join(bad)
    done = sorted(name for name in PENDING if not found.get(name))
    assert not done, f"{done} launch through cpu_env now (or are gone): remove them from PENDING"


def test_the_check_sees_a_launch_that_is_not_hidden(tmp_path):
    """The checker itself: a bare launch, one with os.environ, one putting CUDA back are found; cpu_env passes,
    also through a name, an import and a module alias."""
    (tmp_path / "helper_env.py").write_text("from helpers import cpu_env\nENV = cpu_env(A='1')\n")
    (tmp_path / "test_x.py").write_text(
        "import os, subprocess, sys\nimport helper_env as h\nfrom helper_env import ENV\nfrom helpers import cpu_env\n"
        "subprocess.run([sys.executable, 'x.py'])\n"
        "subprocess.run([sys.executable, 'x.py'], env=os.environ)\n"
        "subprocess.Popen(['deepspeed', '--num_gpus', '2'], env={**ENV, 'CUDA_VISIBLE_DEVICES': '0,1'})\n"
        "subprocess.run([sys.executable, 'x.py'], env=cpu_env())\n"
        "LOCAL = {**ENV, 'RANK': '0'}\n"
        "subprocess.run([sys.executable, 'x.py'], env=LOCAL)\n"
        "subprocess.run([sys.executable, 'x.py'], env={**h.ENV})\n"
        "subprocess.run([sys.executable, 'x.py', '--help'])\n")
    assert [line.split(":")[1] for line in Scanner(tmp_path).unhidden_launches("test_x")] == ["5", "6", "7"]


def test_cpu_env_hides_cuda_whatever_the_caller_adds(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    env = cpu_env(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="0")
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["DS_ACCELERATOR"] == "cpu" and env["OMP_NUM_THREADS"] == "1"
    assert env["PATH"] == os.environ["PATH"] and "CUDA_VISIBLE_DEVICES" in os.environ  # the caller's env untouched


@pytest.mark.parametrize("name", sorted(EXEMPT))
def test_exempt_files_start_no_python(name):
    """An exempt file's launches run no `sys.executable` with a script or `-c` code that could import torch."""
    path = TESTS / name
    if not path.is_file():
        pytest.skip(f"{name} is gone")
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LAUNCHES:
            text = ast.unparse(node)
            assert not ("sys.executable" in text and ("launch/" in text or "'-c'" in text or "distill" in text)), text
