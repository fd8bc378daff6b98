# journeywatch: the one entry point for humans and CI.
#   make run    install what is needed, start the whole product (embedded broker + ClickHouse)
#   make test   install what is needed, run lint and the whole test suite
#   make bench  run the benchmarks, write docs/benchmarks.md
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint unit integration bench docs clean install system-deps

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	@$(VENV)/bin/journeywatch run

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline streams sinks tests benchmarks docs/generate.py deploy/grafana/dashboards.py
	$(VENV)/bin/mypy pipeline streams sinks deploy/grafana/dashboards.py
	$(VENV)/bin/lint-imports

# Tools the tests drive that come from Debian rather than PyPI; installed when missing.
system-deps:
	@missing=""; \
	command -v kubectl >/dev/null || missing="$$missing kubectl"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v amtool >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then apt-get update -q && apt-get install -y -q $$missing; fi

test: $(STAMP) system-deps lint
	$(PY) -m pytest -q

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

docs: $(STAMP)
	$(PY) docs/generate.py

bench: $(STAMP)
	$(PY) -m benchmarks $(SUITES)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache test-artifacts
