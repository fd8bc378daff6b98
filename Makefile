# journeywatch: the one entry point for humans and CI.
#   make run    install what is needed, start the whole product (embedded broker + ClickHouse)
#   make test   install what is needed, run lint and the whole test suite
#   make bench  run the benchmarks, write docs/benchmarks.md
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: audit run test lint unit integration bench docs clean install system-deps compile lock fuzz
# the journey engine's hot modules, compiled with mypyc (pipeline/_compiled.py)
COMPILED := build/compiled/sources.json
COMPILED_SOURCES := pipeline/engine.py pipeline/identity.py pipeline/experience.py pipeline/partitioning.py pipeline/shard.py pipeline/touch.py pipeline/_compiled.py deploy/compile_core.py

# the browser SDKs the tests load in headless Chromium, from npm (tests/browser_sdk/package-lock.json)
NODE_STAMP := tests/browser_sdk/node_modules/.installed-stamp

install: $(STAMP) $(NODE_STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

$(NODE_STAMP): tests/browser_sdk/package.json tests/browser_sdk/package-lock.json
	@npm ci --prefix tests/browser_sdk --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $(NODE_STAMP)

# the newest versions pyproject.toml allows, in a scratch environment, pinned in constraints.txt
lock:
	@rm -rf build/lock && $(PYTHON) -m venv build/lock
	@build/lock/bin/pip install --quiet --upgrade pip && build/lock/bin/pip install --quiet -e '.[dev]'
	@{ sed -n '1,2p' constraints.txt; build/lock/bin/pip freeze --exclude-editable | grep -v '^-e'; } > constraints.new
	@mv constraints.new constraints.txt && rm -rf build/lock
	@echo "constraints.txt refreshed: run make test, then commit it"

$(COMPILED): $(STAMP) $(COMPILED_SOURCES)
	@$(PY) deploy/compile_core.py

compile: $(COMPILED)

# make run works without a C compiler too: the plain modules are used (slower), and it says so
run: $(STAMP)
	@$(MAKE) --no-print-directory compile || echo "journeywatch: the engine could not be compiled; running it as plain Python (the engine about 1.5 times slower)"
	@$(VENV)/bin/journeywatch run

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline streams sinks tests benchmarks docs/generate.py deploy/grafana/dashboards.py deploy/compile_core.py
	$(VENV)/bin/ruff format --check pipeline streams sinks tests benchmarks docs/generate.py deploy/grafana/dashboards.py deploy/compile_core.py
	$(VENV)/bin/mypy pipeline streams sinks tests benchmarks docs/generate.py deploy/grafana/dashboards.py deploy/compile_core.py
	$(VENV)/bin/lint-imports
	@if [ "$${JW_AUDIT:-1}" = 0 ]; then echo "lint: dependency audit off (JW_AUDIT=0)"; \
	elif $(PY) -c "import urllib.request; urllib.request.urlopen('https://pypi.org/pypi/pip/24.0/json', timeout=10)" 2>/dev/null; then \
		$(MAKE) --no-print-directory audit; \
	else echo "lint: dependency audit NOT run: PyPI's JSON API (https://pypi.org/pypi/<name>/<version>/json, as pip-audit asks) does not answer here (offline, or a mirror without it); run make audit where it does (docs/operations/security.md)"; fi

# Known vulnerabilities in the locked dependencies (constraints.txt), from PyPI's advisories
audit: $(STAMP)
	$(VENV)/bin/pip-audit -r constraints.txt --no-deps --disable-pip --strict --desc

# Tools the tests drive that come from Debian rather than PyPI; installed when missing.
system-deps:
	@missing=""; \
	command -v kubectl >/dev/null || missing="$$missing kubectl"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v amtool >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then apt-get update -q && apt-get install -y -q $$missing; fi

# the unit tests (engine scenarios and properties) against the plain modules, then the whole
# suite against the compiled build (JW_COMPILED=1: fails rather than fall back to plain), in
# TEST_JOBS processes (pytest-xdist): the end-to-end tests mostly wait on a paced day, and each
# starts its own broker, ClickHouse and workers on free loopback ports. TEST_JOBS=1 runs it in one.
TEST_JOBS ?= 2
test: $(STAMP) system-deps $(NODE_STAMP) lint $(COMPILED)
	JW_COMPILED=0 $(PY) -m pytest -q -p no:cacheprovider tests/unit
	JW_COMPILED=1 $(PY) -m pytest -q --durations=40 $(if $(filter-out 1,$(TEST_JOBS)),-n $(TEST_JOBS) --dist worksteal)

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

# the fuzz properties (tests/unit/test_fuzz.py) far longer than make test runs them, with new
# random draws each time, and those still finding a known open defect: make fuzz EXAMPLES=20000
fuzz: $(STAMP) $(COMPILED)
	JW_FUZZ_EXAMPLES=$(or $(EXAMPLES),2000) $(PY) -m pytest -q -p no:cacheprovider tests/unit/test_fuzz.py

docs: $(STAMP)
	$(PY) docs/generate.py

bench: $(STAMP) $(COMPILED)
	$(PY) -m benchmarks $(SUITES)

clean:
	rm -rf $(VENV) var build .pytest_cache .mypy_cache .ruff_cache test-artifacts
