# The two commands of README.md: `make run` and `make test`.
VENV ?= .venv
export VENV

.PHONY: setup run test lint

setup:
	@scripts/setup.sh

run: setup
	$(VENV)/bin/spine serve

test: setup
	@scripts/setup-test-tools.sh
	@scripts/setup-triton.sh
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pytest -rfEs

lint: setup
	$(VENV)/bin/ruff check .
