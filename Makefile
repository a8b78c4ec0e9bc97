# The two commands: `make demo` and `make test`. Everything else is a step of those.
VENV   ?= .venv
PY     := $(VENV)/bin/python
ASSETS ?= assets
DEMO   ?= demo

.PHONY: install assets demo lint test test-floor bench clean

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

# The lowest versions setup.py allows of the libraries whose API we depend on most, in their own venv:
# the fast tests (models, loss, data, evaluation) must pass there too. CI runs it after `make test`.
FLOOR_VENV  ?= .venv-floor
FLOOR_SPECS ?= transformers==5.0.0
test-floor: assets
	EXTRA_SPECS="$(FLOOR_SPECS)" bash tools/install.sh $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pytest -q -m "not slow and not gpu" -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check .

bench: assets
	$(PY) tools/bench/pretokenize_bench.py --out tools/bench/results/pretokenize_bench_cpu.md

clean:
	rm -rf $(DEMO) .pytest_cache
