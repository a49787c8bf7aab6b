# The README's two commands: `make demo` (set up + run the chained pipeline on demo data)
# and `make test` (set up + lint + tests); `make unit` is the fast inner loop (no end-to-end runs).
# Everything installs into .venv, with the extras dev (pytest, ruff)
# and deploy (MONAI Deploy App SDK for deploy/brats_seg_app, whose test runs in `make test`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_output

.PHONY: setup test unit lint demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,deploy]"
	touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

# unit tests only: every test not marked slow (bundle / pipeline end-to-end runs); under 2 minutes
unit: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(PY) -m custom_components demo --out $(DEMO_DIR)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
