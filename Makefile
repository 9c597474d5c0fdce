# The two commands that matter: `make demo` (the main job end to end) and `make test`.
# Both install what is missing (system packages with apt, Python packages in .venv).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install system-deps trainer-env test test-fast up down status demo bench bench-instructions lint clean

help:
	@echo "make demo    start the local stack and run a training job end to end"
	@echo "make test    install what is missing and run the whole test suite"
	@echo "make up      start the local stack in the background (.run/stack.env)"
	@echo "make down    stop it"
	@echo "make status  which services answer"
	@echo "make bench   measure the request path, MLflow throughput, uploads (.run/bench)"
	@echo "make bench-instructions  instructions per callback in the API (callgrind, ~4 min)"

system-deps:
	@bash scripts/install-system-deps.sh

$(PY):
	$(PYTHON) -m venv $(VENV) || (bash scripts/install-system-deps.sh --venv && $(PYTHON) -m venv $(VENV))

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: system-deps $(STAMP)

# The Ultralytics trainer's own environment (torch, ultralytics, trainer_sdk; no mlflow)
trainer-env:
	@bash scripts/setup-trainer-env.sh

test: install trainer-env
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest tests/unit tests/api $(PYTEST_ARGS)

up: install
	$(PY) -m platform_app.devstack up

down:
	@if [ -x $(PY) ]; then $(PY) -m platform_app.devstack down; fi

status:
	$(PY) -m platform_app.devstack status

demo: up trainer-env
	$(PY) scripts/demo.py

# Not part of `make test`: minutes of load on a private stack; prints a table and writes
# .run/bench/latest.json. `make bench BENCH_ARGS=--quick` for a short sanity run.
bench: install
	$(PY) -m bench $(BENCH_ARGS)

# Instructions per progress callback in the API process (valgrind): exact where req/s drifts.
bench-instructions: install
	$(PY) -m bench.instructions

lint: install
	$(VENV)/bin/ruff check .

clean: down
	rm -rf .run
