# raytrain_orch — two commands set everything up on a fresh machine:
#   make demo   the digits pipeline on a local Ray (creates .venv on first use)
#   make test   the whole test suite (unit, integration on a local Ray, e2e with real servers)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-unit bench ui clean

# The venv is rebuilt when the dependencies change. torch is pinned to the CPU wheel in
# requirements/constraints.txt (pyproject.toml keeps a normal range for users).
$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt torch
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rto run configs/digits.yaml

test: $(STAMP)
	$(BIN)/python -m pytest tests --durations=15

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

# Orchestration overhead against plain PyTorch, side by side (≈ 65 min on 2 CPUs); results in
# bench/results/, summarised in docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/scale.py

ui: $(STAMP)
	$(BIN)/rto ui configs/digits.yaml

clean:
	rm -rf rto-runs mlflow.db mlruns
