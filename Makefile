# The documented entry points. `make run` and `make test` are the README's two commands.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export SHOPREC_HOME ?= $(CURDIR)/.shoprec
export AIRFLOW_HOME ?= $(SHOPREC_HOME)/airflow
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help venv run test test-unit test-integration lint typecheck bench bench-quick lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# Reinstall only when the lock or the project metadata changed.
$(STAMP): constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	# torch first, as the CPU build pinned in the lock (a plain `torch` would pull a CUDA build).
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	# dp-accounting pins attrs<24, which Airflow's task SDK cannot use; its real needs are declared.
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt dp-accounting
	touch $(STAMP)

venv: $(STAMP)  ## create or reuse .venv from the lock

run: $(STAMP)  ## the whole pipeline through real Airflow on embedded defaults
	$(BIN)/shoprec demo

test: $(STAMP)  ## the whole test suite
	$(BIN)/python -m pytest

test-unit: $(STAMP)  ## fast unit tests only
	$(BIN)/python -m pytest -m "not integration and not production"

test-integration: $(STAMP)  ## integration tests against the real components
	$(BIN)/python -m pytest -m "integration or production"

lint: $(STAMP)  ## ruff (AIR rules on dags/), the import layers of .importlinter and mypy on tasks/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)  ## the benchmark suite; writes docs/benchmarks.md and docs/benchmarks.json
	$(BIN)/python -m benchmarks.run --full

bench-quick: $(STAMP)  ## a reduced benchmark run (under 5 minutes)
	$(BIN)/python -m benchmarks.run --quick

lock:  ## re-pin every transitive version into constraints.txt from the current venv
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^shoprec' > constraints.txt

clean:  ## remove local state (keeps .venv)
	rm -rf $(SHOPREC_HOME)
