# Quick start:  make quickstart   (set up, then the whole pipeline on the built-in world)
#               make test         (set up, then the test suite; .ci/run runs this)
# On a CPU-only machine torch is pinned to its CPU wheel (constraints-cpu.txt); on a GPU
# machine run `make setup CONSTRAINTS=` (or plain `pip install -e .`) for the normal CUDA torch.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup quickstart test test-slow bench
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]'
	touch $@

quickstart: setup
	$(BIN)/rlhf-pipeline experiment=quickstart $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: setup
	$(BIN)/python -m pytest -q -m slow $(ARGS)
