# Set-up lives here: `make demo` and `make test` each create the virtual environment on
# first use (torch 2.14.1 / torchvision 0.29.1, flwr 1.42, timm, pydicom, ...).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup demo test unit lint typecheck benchmark clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "torchattacks==3.5.1"
	touch $@

demo: setup
	$(VENV)/bin/fedattack demo --config configs/demo.yaml

# Everything CI runs: formatting and lint, types, the whole suite (end-to-end included).
test: lint typecheck
	$(PY) -m pytest

# The unit tests only (no real Flower processes, no containers): a minute or two.
unit: setup
	$(PY) -m pytest -m "not e2e"

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: setup
	$(PY) -m mypy

benchmark: setup
	$(PY) -m benchmarks.run

clean:
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
