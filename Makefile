# The two commands: `make demo` and `make test`. Everything else is a step of those.
VENV   ?= .venv
PY     := $(VENV)/bin/python
ASSETS ?= assets
DEMO   ?= demo
# a folder from tools/wheelhouse.sh: `make install WHEELHOUSE=DIR` installs offline from it (air-gapped GPU nodes)
WHEELHOUSE ?=

.PHONY: install assets demo lint test test-floor test-extended bench bench-long clean gpu-check

$(VENV)/.installed: setup.py tools/install.sh
	bash tools/install.sh $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE)) $(VENV)
	touch $@

install: $(VENV)/.installed

assets: install
	PYTHON=$(PY) bash tools/fetch_offline_assets.sh $(ASSETS)

# The main job end to end on the offline defaults.
demo: assets
	PYTHON=$(PY) ASSETS=$(ASSETS) bash tools/demo.sh $(DEMO)

test: assets
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not extended"

# The lowest versions setup.py allows of the libraries whose API we depend on most, in their own venv:
# the fast tests (models, loss, data, evaluation) must pass there too. CI runs it after `make test`.
FLOOR_VENV  ?= .venv-floor
FLOOR_SPECS ?= transformers==5.0.0
test-floor: assets
	EXTRA_SPECS="$(FLOOR_SPECS)" bash tools/install.sh $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pytest -q -m "not slow and not gpu" -p no:cacheprovider

# The checks that take minutes, kept out of `make test`: tools/wheelhouse.sh end to end (download a wheelhouse for
# this Python, install distill from it with --no-index into a fresh venv that has only torch; ~200 MB), the
# `make gpu-check` dry run on CPU, the 2-rank DeBERTa-v3 and ModernBERT runs (their tokenizers, resume, export,
# evaluation), the embedding-loss runs, the ZeRO-2 export, a kill -9 during a re-save and SIGTERM to one of two
# torchrun nodes. CI runs it after `make test`.
test-extended: assets
	$(PY) -m pytest -q -m extended -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check .

# On a CUDA machine: the GPU tests, the kernel and step benchmarks and a real run with SIGTERM and resume, one report
# (tools/bench/results/gpu_check/gpu_check.md). GPU_CHECK_ARGS=--dry-run rehearses it on CPU with tiny shapes.
gpu-check: assets
	$(PY) tools/gpu_check.py --out tools/bench/results/gpu_check $(GPU_CHECK_ARGS)

bench: assets
	$(PY) tools/bench/pretokenize_bench.py --out tools/bench/results/pretokenize_bench_cpu.md

# Long sequences on CPU (~2 minutes, tiny models): the relation loss's peak memory at S = 512, 2048, 8192 (chunked:
# linear in S; reference: its (2R+3) S x S estimate, refused by the budget at 8192) and a ModernBERT step at each S.
bench-long: install
	$(PY) tools/bench/long_context_bench.py --out tools/bench/results/long_context_bench_cpu.md

clean:
	rm -rf $(DEMO) .pytest_cache
