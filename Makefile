# Everything installs from this project's own files into .venv; nothing downloads at run time.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo up test test-chaos test-mutation bench lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[sandbox,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/provisioner demo

up: $(STAMP)
	$(BIN)/provisioner up

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	bash scripts/install-system-deps.sh
	$(BIN)/pytest

# Only the crash-recovery tests (real processes killed; minutes). `make test` runs them too.
test-chaos: $(STAMP)
	$(BIN)/pytest -m chaos

# Mutation testing of the promise-carrying code (tests/mutation; about 2 h 20 min on 2 cores, not run by CI).
test-mutation: $(STAMP)
	$(BIN)/python -m tests.mutation

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .data .mypy_cache .ruff_cache .pytest_cache mutants
