# `make train` and `make test` do all set-up on a fresh machine (Python >= 3.10 with pip).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev  # optional extras to install too: make test EXTRAS=dev,bpe,zh,plot (README lists them)
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(strip $(EXTRAS)))
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: install train test test-fast lint format mutate tensorboard bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e ".[$(strip $(EXTRAS))]"
	touch $(STAMP)

train: $(STAMP)  ## make train ARGS="experiment=sst2_lstm"
	$(BIN)/bigmodel train $(ARGS)

test: $(STAMP)  ## the whole suite, slow end-to-end tests included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff (lint + format check) over src, tests and scripts; mypy over src (settings: pyproject.toml)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy

format: $(STAMP)  ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format src tests scripts
	$(BIN)/ruff check --fix src tests scripts

# Mutation testing of the core modules ([tool.mutmut] in pyproject.toml; results: docs/MUTATION.md).
# Slow, so not part of CI. MODULES narrows it: make mutate MODULES="optim losses"
MODULES ?= losses optim metrics callbacks checkpoint data.loading trainer
mutate:
	$(MAKE) install EXTRAS=dev,mutate
	for m in $(MODULES); do OMP_NUM_THREADS=1 nice -n 10 $(BIN)/mutmut run "bigmodel.$$m.*" || exit 1; done
	$(BIN)/mutmut results

tensorboard: $(STAMP)
	$(BIN)/bigmodel tensorboard

bench: $(STAMP)
	$(BIN)/python scripts/bench_overhead.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache mutants
