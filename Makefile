# The two commands a newcomer needs: `make run` and `make test`.
# Both set themselves up on a fresh machine (virtual environment, pinned
# dependencies, the Node test fixture).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_DIR := tests/e2e/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
PYTEST_ARGS ?=

.PHONY: install node run test lint bench fuzz demo screenshots clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# The real Better Auth + convex() server the end-to-end tests run against.
# Without npm the e2e tests skip with a reason (and fail under CI=true).
node: $(NODE_STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else \
		echo "npm not found: the end-to-end tests will be skipped"; \
	fi

run: install
	$(BIN)/sidecar serve $(ARGS)

test: install node
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check sidecar tests bench demo fuzz
	$(BIN)/ruff format --check sidecar tests bench demo fuzz
	$(BIN)/mypy
	$(BIN)/hadolint deploy/Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml

bench: install node
	$(BIN)/python bench/run.py $(ARGS)

fuzz: install
	$(BIN)/python fuzz/run.py $(ARGS)

# The README's pictures, written by the browser tests themselves.
screenshots: install node
	SIDECAR_SCREENSHOTS=docs/screenshots $(BIN)/pytest -q tests/e2e/test_browser_journeys.py

demo: install node
	$(BIN)/python demo/run.py

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache
