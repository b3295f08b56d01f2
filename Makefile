# raytrain_orch — two commands set everything up on a fresh machine:
#   make demo   the digits pipeline on a local Ray (creates .venv on first use)
#   make test   lint and types, then the whole test suite (unit, integration on a local Ray, e2e with real servers)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-unit lint bench ui clean dist

# The venv is rebuilt when the dependencies change. torch is pinned to the CPU wheel in
# requirements/constraints.txt (pyproject.toml keeps a normal range for users). PYTHONWARNINGS
# keeps setuptools' banner about an editable install's folder named like the package (it is this
# checkout) off the install's output.
$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt torch
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rto run configs/digits.yaml

test: $(STAMP) browser lint
	$(BIN)/python -m pytest tests --durations=15

# ruff (lint, and the format check) and mypy (strict on core/), as configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check raytrain_orch tests bench jobs
	$(BIN)/ruff format --check raytrain_orch tests bench jobs
	$(BIN)/mypy

# Debian's chromium and its matching chromedriver, for the browser test of the MLflow UI
# (tests/e2e/test_ui_browser.py). Best effort: without root or apt-get it says what to run and
# goes on, and that test skips (it fails instead where CI=true).
.PHONY: browser
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "make browser: skipped (needs root and apt-get); to run the browser test: sudo apt-get install -y chromium chromium-driver"; \
	else \
	  echo "make browser: apt-get install chromium chromium-driver"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq chromium chromium-driver >/dev/null \
	    || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	    || echo "make browser: apt-get could not install chromium chromium-driver"; \
	fi

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

# Orchestration and tracking overhead against plain PyTorch, side by side (≈ 85 min on 2 CPUs); results in
# bench/results/, summarised in docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/tracking_overhead.py
	$(BIN)/python bench/submit_overhead.py

# The sdist and the wheel, in dist/ (tests/e2e/test_wheel.py installs the wheel into a fresh venv).
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --sdist --wheel --outdir dist . >/dev/null
	@ls dist

ui: $(STAMP)
	$(BIN)/rto ui configs/digits.yaml

clean:
	rm -rf rto-runs mlflow.db mlruns dist
