# Two commands do everything on a fresh Debian 12 machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test test-docker bench fuzz deps os-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

deps: $(STAMP) os-deps

os-deps:
	bash scripts/install-os-deps.sh

## Run the whole test suite (installs the Python and Debian packages it needs).
test: deps
	$(PY) -m pytest -q -m "not docker" $(PYTEST_ARGS)

## End-to-end tests against a real Grafana in Docker (needs a Docker engine).
test-docker: deps
	$(PY) -m pytest -q -m docker $(PYTEST_ARGS)

## Run the demo: docker compose where a Docker engine runs, else local binaries.
demo: deps
	bash scripts/demo.sh

## Fuzz, load and fault run at full size: 10,000 requests generated from openapi.json against a real
## vigil serve with concurrent panels, Prometheus stopped mid-run and a worker killed (a table on stdout).
fuzz: deps
	$(PY) -m bench fuzz --requests 10000 $(FUZZ_ARGS)

## Benchmarks (tables on stdout).
bench: deps
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache
