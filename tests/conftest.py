"""The fixtures: a tiny tokenizer built here, the real offline teacher and corpus, one torch thread, the gpu
marker. What the tests share besides fixtures is in helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ASSETS, REPO, WORDS, build_tiny_tokenizer, cpu_env, save_tiny_teacher, write_shard_dir  # noqa: F401


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def teacher_dir() -> Path:
    if not (ASSETS / "teacher" / "config.json").is_file():
        pytest.skip(f"real offline teacher not found under {ASSETS}/teacher: run `bash tools/fetch_offline_assets.sh`")
    return ASSETS / "teacher"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not (ASSETS / "corpus").is_dir():
        pytest.skip(f"offline corpus not found under {ASSETS}/corpus: run `bash tools/fetch_offline_assets.sh`")
    return ASSETS / "corpus"


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` are skipped where no CUDA GPU is present."""
    import pytest
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (gpu marker)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny tensors: on a shared 2-core machine a second thread adds only
    synchronisation, which costs seconds."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
