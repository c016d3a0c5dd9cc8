# driftloop developer commands. `make test` is what CI runs (.ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help install demo test lint typecheck bench-ingest bench-drift clean

help:
	@echo "make demo        # run the one-command demo on embedded defaults (SQLite + local Tansu)"
	@echo "make test        # install, start PostgreSQL and Tansu, run the whole suite (= .ci/run)"
	@echo "make lint        # ruff + mypy"
	@echo "make bench-ingest / bench-drift"

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,embeddings,retrain]"

install: $(PY)

demo: $(PY)
	$(VENV)/bin/driftloop demo

test:
	bash .ci/run

lint: $(PY)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench-ingest: $(PY)
	$(PY) bench/ingest.py --records 200000

bench-drift: $(PY)
	$(PY) bench/drift.py

clean:
	rm -rf driftloop-data .pytest_cache .mypy_cache .ruff_cache
