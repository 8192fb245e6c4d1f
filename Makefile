PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_HOME := $(CURDIR)/.sp-demo

.PHONY: run test lint typecheck bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	SP_BIN=$(BIN)/sp DEMO_HOME=$(DEMO_HOME) ./demo.sh

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

bench: $(VENV)/.installed
	$(BIN)/python bench/append.py
	$(BIN)/python bench/replay.py
	$(BIN)/python bench/cli.py
	$(BIN)/python bench/workers.py
	$(BIN)/python bench/sandbox.py

clean:
	rm -rf $(VENV) $(DEMO_HOME) build *.egg-info
