# Two commands do everything on a fresh Debian 12 machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUM := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# Two layers: what Vigil needs to run (`make demo`), and the test tools on top (`make test`).
RUNTIME_STAMP := $(VENV)/.runtime-$(SUM)
STAMP := $(VENV)/.installed-$(SUM)

.PHONY: demo test test-docker bench fuzz deps runtime-deps os-deps runtime-os-deps clean

$(RUNTIME_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e .
	rm -f $(VENV)/.runtime-*
	touch $@

$(STAMP): $(RUNTIME_STAMP)
	$(VENV)/bin/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

## Everything the tests need (Python test extra, Debian packages, npm schema tools).
deps: $(STAMP) os-deps

## Only what running Vigil needs (no test-only packages): used by `make demo`.
runtime-deps: $(RUNTIME_STAMP) runtime-os-deps

os-deps:
	bash scripts/install-os-deps.sh

runtime-os-deps:
	bash scripts/install-os-deps.sh --runtime

## Run the whole test suite (installs the Python and Debian packages it needs).
test: deps
	$(PY) -m pytest -q -m "not docker" $(PYTEST_ARGS)

## End-to-end tests against a real Grafana in Docker (needs a Docker engine).
test-docker: deps
	$(PY) -m pytest -q -m docker $(PYTEST_ARGS)

## Run the demo: docker compose where a Docker engine runs, else local binaries.
demo: runtime-deps
	bash scripts/demo.sh

## Fuzz, load and fault run at full size: 10,000 requests generated from openapi.json against a real
## vigil serve with concurrent panels, Prometheus stopped mid-run and a worker killed, then the worker's
## fault scenarios (Grafana, Alertmanager, Prometheus failing; SIGKILL) at 20 series (a table on stdout).
fuzz: deps
	$(PY) -m bench fuzz --requests 10000 $(FUZZ_ARGS)

## Benchmarks (tables on stdout).
bench: deps
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache
