# The two commands: `make demo` and `make test`. Everything else is a step of those.
VENV   ?= .venv
PY     := $(VENV)/bin/python
ASSETS ?= assets
DEMO   ?= demo

.PHONY: install assets demo lint test bench clean

$(VENV)/.installed: setup.py tools/install.sh
	bash tools/install.sh $(VENV)
	touch $@

install: $(VENV)/.installed

assets: install
	PYTHON=$(PY) bash tools/fetch_offline_assets.sh $(ASSETS)

# The main job end to end on the offline defaults.
demo: assets
	PYTHON=$(PY) ASSETS=$(ASSETS) bash tools/demo.sh $(DEMO)

test: assets
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

bench: assets
	$(PY) tools/bench/pretokenize_bench.py --out tools/bench/results/pretokenize_bench_cpu.md

clean:
	rm -rf $(DEMO) .pytest_cache
