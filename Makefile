# Two commands do all set-up: `make demo` (the example DAG end to end) and `make test`.
# `make test-quick` skips the slow tests; `make lint` runs ruff's checks and its format check.
# Each creates .venv if missing, installs torch==2.13.0 first (a CPU wheel; an unpinned torch
# pulls gigabytes of CUDA), then the package in editable mode with its dev extras. The stamp
# file makes a second call skip what is installed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.certrisk-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-quick lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/certrisk demo

# The whole suite (CI runs it): unit, statistical, database and real Airflow tests.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The quick loop: everything but the tests marked slow (real Airflow processes, whole DAG runs).
test-quick: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check certrisk dags tests bench
	$(VENV)/bin/ruff format --check certrisk dags tests bench

bench: $(STAMP)
	$(PY) bench/certify.py
	$(PY) bench/bounds.py
	$(PY) bench/detection.py
	$(PY) bench/signals.py
	$(PY) bench/store.py
	$(PY) bench/score.py
	$(PY) bench/scale.py

clean:
	rm -rf .certrisk .pytest_cache
