"""distill: MiniLMv2 self-attention relation distillation of BERT-family encoders, scaled with DeepSpeed."""
from pathlib import Path

from setuptools import find_packages, setup

EMBEDDINGS = ["sentence-transformers>=5.0",  # the releases that accept transformers 5
              "mteb>=2.12"]  # the embedding scores: mteb.evaluate, ModelMeta.create_empty (2.12; tested 2.12, 2.26)

setup(
    name="distill",
    version="0.1.0",
    description=__doc__,
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["distill", "distill.*"]),
    install_requires=[
        # torch: kept as installed; the Makefile installs a CPU build where one is at hand.
        "torch>=2.2",
        # 5.0: from_pretrained(dtype=...) (4.56) and set_attn_implementation on a loaded BERT-family model
        # (FrozenTeacher(model, attn_implementation=...); 4.57.6 refuses it). `make test-floor` (CI) tests 5.0.0.
        "transformers>=5.0",
        "tokenizers>=0.22",  # what transformers 5.0 requires
        "datasets>=2.18",
        "deepspeed>=0.14",
        "accelerate>=0.30",
        "tensorboard>=2.14",
        "numpy>=1.24",
        "pyarrow>=14",
        "tqdm>=4.66",
        "safetensors>=0.4.3",  # what transformers 5.0 requires
        # evaluation
        "scikit-learn>=1.3",
        "scipy>=1.10",
        "pandas>=2.0",
    ],
    entry_points={"console_scripts": [
        "distill = distill.commands:main",
        "distill-train = distill.cli:main",
        "distill-pretokenize = distill.pretokenize:main",
        "distill-inspect = distill.inspect_shards:main",
        "distill-export = distill.export:main",
        "distill-evaluate = distill.evaluation.cli:main",
        "distill-evaluate-embeddings = distill.evaluation.embedding_eval:main",
        "distill-demo-table = distill.evaluation.demo:main",
    ]},
    extras_require={
        # sentence-transformers in and out (export, embedding evaluation), MTEB (the embedding scores, --eval_steps):
        # pip install distill[embeddings]
        "embeddings": EMBEDDINGS,
        "test": ["pytest>=7.4", "pytest-timeout>=2.2", "ruff==0.17.6", *EMBEDDINGS,
                 # the Triton kernels run in its CPU interpreter in the tests
                 "triton>=3.0; sys_platform == 'linux' and platform_machine == 'x86_64'"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
