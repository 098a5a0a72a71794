# `make test` and `make run` set up whatever is missing (system packages, .venv) first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: setup test run bench train clean-venv

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

# Train the shipped checkpoints on POP909, resuming from the committed state in training/pop909
# (stop with Ctrl-C at any time: the state is saved). New exports are copied to checkpoints/ and
# their SHA-256 recorded in checkpoints/SHA256SUMS (tests/test_shipped_checkpoints.py checks them).
POP909 ?= ../shared/data/pop909
train: $(VENV)/.installed
	@test -f data/pop909/index.json || $(BIN)/cwcompose prepare $(POP909) data/pop909
	$(BIN)/cwcompose train --data data/pop909 --out training/pop909 --resume
	@for f in training/pop909/step*.safetensors; do [ -f "$$f" ] && cp -n "$$f" "$${f%.safetensors}.json" checkpoints/; done; true
	@cd checkpoints && find . -name 'step*.safetensors' | sed 's|^\./||' | sort | xargs sha256sum > SHA256SUMS

bench: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[bench]'

clean-venv:
	rm -rf $(VENV)
