# dlrun's development commands. `make train` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATA_ROOT ?= ../shared/data
BENCH_SEEDS ?= 42,1,2,3

.DEFAULT_GOAL := help
.PHONY: help install train lint test test-fast bench tb clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,cluster,search]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install dlrun (editable) with its test tools and the sweep extras

train: install ## install, then train the default MLP on the bundled digits (offline)
	$(BIN)/dlrun train

lint: install ## ruff (lint and format), the import-layer contract, and the code-shape checks
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_shape.py

# Most tests wait on a dlrun process's imports, one core each: two workers take about 30% off the suite on
# two cores. More workers than cores only make the timing-sensitive tests (signals, locks) wait longer.
TEST_WORKERS ?= 2

test: lint ## install, check the code, then run the whole test suite (TEST_WORKERS processes, default 2)
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

test-fast: lint ## the tests that do not start dlrun in a subprocess
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow"

bench: install ## speed against the standard PyTorch loop on real MNIST (DATA_ROOT, default ../shared/data; BENCH_SEEDS)
	$(BIN)/python scripts/bench.py --data-root $(DATA_ROOT) --seeds $(BENCH_SEEDS)

# Plain `=`, not `?=`: a HOST or PORT exported by the shell (csh sets HOST to the machine's name) must not
# open TensorBoard to the network; `make tb HOST=0.0.0.0 PORT=6007 LOGDIR=outputs/runs` still overrides.
# TensorBoard keeps 10 images a tag unless told; 10000 keeps every epoch's. Not 0: TensorBoard 2.21 then shows none.
tb: HOST = 127.0.0.1
tb: PORT = 6006
tb: LOGDIR = outputs
tb: install ## TensorBoard over LOGDIR (outputs) at HOST:PORT (127.0.0.1:6006), keeping every epoch's images
	$(BIN)/tensorboard --logdir $(LOGDIR) --host $(HOST) --port $(PORT) --samples_per_plugin images=10000,pr_curves=10000

clean: ## remove runs, build files and caches (keeps .venv)
	rm -rf outputs/runs outputs/sweeps outputs/multirun build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
