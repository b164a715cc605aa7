# counterfeit-scan: `make serve` sets everything up and starts the service; `make test` runs the tests.
# Installs are pinned by constraints.txt (regenerate with `make lock`); pyproject.toml keeps loose ranges.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.installed

# `make serve HOST=0.0.0.0 PORT=9000 ARGS='--data-dir /srv/cs'`; unset HOST/PORT leave the settings'
# defaults (and COUNTERFEIT_SCAN_HOST / COUNTERFEIT_SCAN_PORT) in charge.
HOST ?=
PORT ?=
ARGS ?=
PYTEST_ARGS ?=
IMAGE ?= counterfeit-scan:latest

TYPED_PACKAGES := embeddings reference_catalog service cli training benchmarks tests

.PHONY: help venv serve test lint ruff mypy format lock docker clean distclean

help:
	@echo "make serve    create .venv if needed, then run the service (HOST=, PORT=, ARGS= to override)"
	@echo "make test     create .venv if needed, then run pytest (PYTEST_ARGS= for extra flags)"
	@echo "make lint     ruff check, ruff format --check, mypy"
	@echo "make format   apply ruff's fixes and formatting"
	@echo "make lock     rewrite constraints.txt from the current .venv"
	@echo "make docker   build the container image (IMAGE=$(IMAGE))"
	@echo "make clean    remove caches and build outputs (distclean also removes .venv; data/ is never touched)"

venv: $(STAMP)

# Re-run whenever the pins or the project's metadata change; pip only installs what differs.
$(STAMP): constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade -c constraints.txt pip
	$(PIP) install -c constraints.txt -e '.[dev]'
	@touch $@

serve: venv
	$(BIN)/counterfeit-scan serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT)) $(ARGS)

# pytest exits 5 when it collects nothing: that is a failure here, said out loud.
test: venv
	@rc=0; $(BIN)/python -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

lint: ruff mypy

# Both checks run (and report) even when the first fails.
ruff: venv
	@rc=0; $(BIN)/ruff check . || rc=$$?; $(BIN)/ruff format --check . || rc=$$?; exit $$rc

mypy: venv
	$(BIN)/mypy $(TYPED_PACKAGES)

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lock: venv
	@{ \
	  echo "# Exact pins for every package in the development venv (runtime + dev extras), for Python 3.11 on Linux x86_64."; \
	  echo "# Used as constraints: pip install -c constraints.txt -e '.[dev]'  (pyproject.toml keeps loose ranges)."; \
	  echo "# Regenerate after changing dependencies: make lock"; \
	  echo "#   (= .venv/bin/pip freeze --all --exclude-editable, minus the project itself and wheel; setuptools stays: torch requires it)."; \
	  echo "# torch must stay 2.14.1 with torchvision 0.29.1: the torch 2.13.0+cpu wheel in pip's find-links breaks torchvision's ops."; \
	  $(PIP) freeze --all --exclude-editable | grep -v -i -E '^(counterfeit[-_]scan|wheel)[ =@]'; \
	} > constraints.txt.tmp && mv constraints.txt.tmp constraints.txt
	@touch $(STAMP)
	@echo "constraints.txt: $$(grep -c '==' constraints.txt) pins"

docker:
	docker build -t $(IMAGE) .

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
