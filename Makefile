# The commands of README.md: `make run`, `make test` and `make reading-room`.
VENV ?= .venv
export VENV

.PHONY: setup run test lint reading-room

setup:
	@scripts/setup.sh

run: setup
	$(VENV)/bin/spine serve

reading-room: setup
	@scripts/setup-reading-room.sh
	$(VENV)/bin/spine reading-room

test: setup
	@scripts/setup-test-tools.sh
	@scripts/setup-triton.sh
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pytest -rfEs

lint: setup
	$(VENV)/bin/ruff check .
