# The one test command (README "Development"): lint, format check, strict typing, tests.
UV ?= uv
RUN := $(UV) run --frozen

.PHONY: test lint typecheck pytest format bench

test: lint typecheck pytest

lint:
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck:
	$(RUN) mypy

pytest:
	$(RUN) pytest

format:
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

bench:
	$(RUN) python bench/startup.py
