# Set-up lives here: `make demo` and `make test` each create the virtual environment on
# first use (torch 2.14.1 / torchvision 0.29.1, flwr 1.42, timm, pydicom, ...).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup demo test lint benchmark clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "torchattacks==3.5.1"
	touch $@

demo: setup
	$(VENV)/bin/fedattack demo --config configs/demo.yaml

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

benchmark: setup
	$(PY) -m benchmarks.run

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check . || true

clean:
	rm -rf runs .pytest_cache .ruff_cache
