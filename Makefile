# Onramp: the documented way in. `make dev` runs the product, `make test` runs every test.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install dev test test-fast lint fmt typecheck migrate bench system-deps tools-deps clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP) ## Create the virtualenv and install the app, Temporal CLI and test server

migrate: install ## Apply database migrations to DATABASE_URL
	$(BIN)/python -m devstack.prestart

dev: install migrate ## Install and run everything: Temporal, worker, API, Stripe sandbox, mail catcher
	$(BIN)/python -m devstack.run

system-deps: ## Debian packages and services the tests need (PostgreSQL, Redis, Podman, Chromium)
	bash scripts/system-deps.sh

tools-deps: install ## Tool servers for the provisioning tests (Superset, Prefect, JupyterLab, code-server; npm packages)
	bash scripts/tools-deps.sh

test: install system-deps tools-deps ## Install everything and run every test
	$(BIN)/python -m pytest

test-fast: install ## Run the tests that need no tool servers or browser
	$(BIN)/python -m pytest -m "not superset and not prefect and not podman and not workspace_process and not browser and not chaos"

lint: install ## ruff lint + format check, mypy, import contracts (lint-imports)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy api workflows activities core support sandbox devstack worker.py
	$(BIN)/lint-imports

fmt: install ## Format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install system-deps tools-deps ## Benchmarks against floors measured in the same run
	$(BIN)/python -m bench

clean: ## Remove local state (SQLite database, Temporal dev database)
	rm -rf .run onramp.db onramp.db-shm onramp.db-wal
