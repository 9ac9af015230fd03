# Developer targets; CI runs .ci/run (the README's test command with services required).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install style types test cov bench serve

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e '.[dev]'

style: install
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/ruff check src tests bench

types: install
	$(VENV)/bin/mypy

test: install
	$(PY) -m pytest

cov: install
	$(PY) -m pytest tests/core --cov=tidings.core --cov-report=term-missing --cov-fail-under=100

bench: install
	$(PY) bench/run.py

serve: install
	$(VENV)/bin/tidings serve
