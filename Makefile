# One-command entry points. Each target creates .venv with the pinned dependencies first
# (idempotent: reinstalls only when requirements.txt or pyproject.toml change).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: setup demo test test-fast lint bench clean-results

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

## the whole workflow on the embedded demo dataset (random-init backbone)
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml

## the full test suite (unit tests, conformance, workflow, SLURM integration)
test: $(STAMP)
	$(BIN)/pytest -q

## unit tests only (no end-to-end workflow or SLURM runs)
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow and not slurm"

lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile config/demo.yaml

## benchmarks: JSON + Markdown under results/bench/
bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean-results:
	rm -rf results .snakemake
