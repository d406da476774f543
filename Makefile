# Every command a developer needs; .ci/run and the README call the same scripts.
.DEFAULT_GOAL := help
.PHONY: help setup services run test unit web multihost lint format typecheck db-check bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-10s %s\n", $$1, $$2}'

setup: ## Install Debian packages (as root) and the venv
	scripts/setup

services: ## Start a stopped local PostgreSQL and RabbitMQ the tests use (as root)
	scripts/services

run: ## Run vpsd serve on the embedded default (SQLite, local QEMU)
	scripts/run

test: ## Lint, type-check and run the whole suite (what CI runs)
	scripts/test

unit: ## Only the fast tests on the fake driver (seconds)
	.venv/bin/pytest tests/unit -q

web: ## The web panel's browser tests (Chromium, headless) and its in-process tests
	.venv/bin/pytest tests/web tests/unit/test_panel.py tests/unit/test_sign_in_throttle.py -q

multihost: ## The multi-host tests: 3 agents, 2 API workers, PostgreSQL, RabbitMQ
	.venv/bin/pytest tests/e2e/test_multihost.py tests/unit/test_broker_dispatch.py -q

lint: ## ruff lint and format check
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench

format: ## Apply ruff's formatting and safe fixes
	.venv/bin/ruff format src tests bench
	.venv/bin/ruff check --fix src tests bench

typecheck: ## mypy --strict on the package
	.venv/bin/mypy

db-check: ## Fail if models and migrations drift (alembic check)
	@dir=$$(mktemp -d /tmp/vpsd-check-XXXX); .venv/bin/vpsd db check --data-dir $$dir; \
	status=$$?; rm -rf $$dir; exit $$status

bench: ## Run the benchmarks and rewrite docs/benchmarks.md
	.venv/bin/python -m bench

clean: ## Remove the venv and caches
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
