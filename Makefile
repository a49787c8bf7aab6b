# The README's two commands: `make demo` (set up + run the chained pipeline on demo data)
# and `make test` (set up + lint + tests); `make unit` is the fast inner loop (no end-to-end runs).
# Everything installs into .venv with the extra dev (pytest, ruff). The MONAI Deploy App SDK (extra deploy, for
# deploy/brats_seg_app) gets its own .venv-deploy: once it is installed, every `import monai` also imports Holoscan,
# which warns about the stack size ("may cause segmentation faults") in every bundle log and adds about a second.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPLOY_VENV ?= .venv-deploy
DEPLOY_PY := $(DEPLOY_VENV)/bin/python
DEMO_DIR ?= demo_output

.PHONY: setup deploy-setup browser test unit lint demo clean

setup: $(VENV)/.installed

# with the extra nnunet (nnU-Net v2, tests/test_nnunet_trainers.py), torch held at the CPU build: nnU-Net's timm
# pulls in torchvision, whose PyPI wheel is a CUDA build that cannot be imported beside a CPU torch
# ("operator torchvision::nms does not exist"); nnU-Net's U-Nets do not use it, so it is removed again, and
# `python -m custom_components nnunet-train` makes nnU-Net skip the Primus trainers that import it
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,nnunet]" torch==2.13.0
	$(PY) -m pip uninstall -q -y torchvision
	touch $@

deploy-setup: $(DEPLOY_VENV)/.installed

$(DEPLOY_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_PY) -m pip install -q torch==2.13.0
	$(DEPLOY_PY) -m pip install -q -e ".[dev,deploy]"
	touch $@

# Debian's Chromium for the gallery's headless-browser test (tests/test_gallery.py skips, saying so, without it);
# installed when apt-get can (root, or sudo without a password), left out otherwise
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
		( $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ) \
		|| echo "chromium not installed: the gallery's browser test will skip"; }

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# every test in .venv, then the MONAI Deploy app's test (skipped in .venv) in .venv-deploy
test: lint deploy-setup browser
	$(PY) -m pytest -q
	$(DEPLOY_PY) -m pytest -q tests/test_deploy_app.py

# unit tests only: every test not marked slow (end-to-end runs, subprocess commands on full-size data); under 2 minutes
unit: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(PY) -m custom_components demo --out $(DEMO_DIR)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
