# `make test` and `make run` set up whatever is missing (system packages, .venv) first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: setup test run bench clean-venv

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

setup: $(VENV)/.installed
	@scripts/setup_system.sh

test: $(VENV)/.installed
	@scripts/setup_system.sh --browser
	$(BIN)/python -m pytest -q

run: setup
	$(BIN)/python app.py

bench: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[bench]'

clean-venv:
	rm -rf $(VENV)
