# The two commands of the README's Quick start. Each creates .venv when missing
# and (re)installs the project whenever pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint bench clean

demo: $(INSTALLED)
	$(PY) examples/quickstart.py

test: $(INSTALLED)
	$(PY) -m pytest

lint: $(INSTALLED)
	$(VENV)/bin/ruff check durable_fx tests bench examples
	$(VENV)/bin/ruff format --check durable_fx tests bench examples
	$(VENV)/bin/mypy

bench: $(INSTALLED)
	$(PY) bench/run.py

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

clean:
	rm -rf $(VENV) .durable_fx .pytest_cache .mypy_cache .ruff_cache
