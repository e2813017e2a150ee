# The two commands of the README's Quick start. Each creates .venv when missing
# and (re)installs the project whenever pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo test test-fast docs lint bench clean

demo: $(INSTALLED)
	$(PY) examples/email_demo.py

# Azurite (the Azure Storage emulator) for the Azure store tests comes from npm,
# pinned by package-lock.json; node_modules is installed when missing or stale.
AZURITE := node_modules/.stamp-npm

# Debian's Chromium and ChromeDriver, for the dashboard's browser tests
# (tests/test_dashboard_browser.py). If they cannot be installed here (apt-get
# needs root), the run goes on and those tests fail naming what is missing.
CHROMEDRIVER := /usr/bin/chromedriver

test: docs $(AZURITE) $(CHROMEDRIVER)
	$(PY) -m pytest

$(CHROMEDRIVER):
	-apt-get install -y -q chromium chromium-driver >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null)

# The fast tier: what a change is checked with first. No subprocess, no Azurite,
# no test over a second (the markers in pyproject.toml); make test runs all.
test-fast: $(INSTALLED)
	$(PY) -m pytest -m "not slow and not azurite" -q

# The documentation site (mkdocs.yml, docs/): --strict makes a broken link,
# anchor or API reference fail the build, and so the test command.
docs: $(INSTALLED)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

lint: $(INSTALLED)
	$(VENV)/bin/ruff check durable_fx email_pipeline function_app.py tests bench examples
	$(VENV)/bin/ruff format --check durable_fx email_pipeline function_app.py tests bench examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(INSTALLED)
	$(PY) bench/run.py

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
# The Functions worker's real indexing, for tests/test_bindings_indexing.py (see
# ../shared/tools/check_function_app.py). It declares Python >= 3.13 but its loader
# runs on 3.11, which pip's extras cannot express: hence --ignore-requires-python.
	$(PY) -m pip install --quiet --no-deps --ignore-requires-python \
		'azure-functions-runtime>=1.3' 'azurefunctions-extensions-base>=1.2'
	@touch $@

$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

clean:
	rm -rf $(VENV) node_modules site .durable_fx .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
