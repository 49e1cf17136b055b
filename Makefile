# `make demo` and `make test` set everything up on first use: a .venv in the repo root, installed with the
# versions pinned in constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
PYTEST_WORKERS ?= 2

.PHONY: test test-slow demo readme-table clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0          # CPU build; any other request downloads the CUDA build
	$(PIP) -e '.[dev]'
	$(PIP) --no-deps vit-pytorch  # its torchvision dependency has no CPU build: see converters/oracle.py
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -m 'not slow' -q

# random-configuration sweeps of every architecture against vit-pytorch, and the multi-device training runs
test-slow: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -m slow -q

# the main job: train on the embedded digits, export to vit-pytorch, check the exported model
demo: $(STAMP)
	rm -rf demo_out/digits
	$(PY) -m vit_flax.train --config=vit_flax/configs/digits.py --workdir=demo_out/digits
	$(PY) -m converters export --workdir=demo_out/digits --out=demo_out/digits.safetensors
	$(PY) -m vit_flax.demo --weights=demo_out/digits.safetensors

readme-table: $(STAMP)
	$(PY) -m vit_flax.registry --write README.md

clean:
	rm -rf $(VENV) demo_out .pytest_cache
