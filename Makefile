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

.PHONY: install node node-mcp-client node-compat run test test-compat image test-image lint bench fuzz demo screenshots clean

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

# The v2 TypeScript MCP SDK client (the one Claude uses), which the consent
# test drives headlessly; installed like the fixture above.
MCP_CLIENT_DIR := tests/e2e/node-mcp-client
MCP_CLIENT_STAMP := $(MCP_CLIENT_DIR)/node_modules/.installed

node-mcp-client: $(MCP_CLIENT_STAMP)

$(MCP_CLIENT_STAMP): $(MCP_CLIENT_DIR)/package.json $(MCP_CLIENT_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(MCP_CLIENT_DIR) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else \
		echo "npm not found: the end-to-end tests will be skipped"; \
	fi

# The oldest Better Auth that @convex-dev/better-auth 0.12.5 accepts; the
# fixture's server.mjs is copied beside its node_modules, so that its imports
# resolve there.
COMPAT_DIR := tests/e2e/node-compat
COMPAT_STAMP := $(COMPAT_DIR)/node_modules/.installed

node-compat: $(COMPAT_STAMP)

$(COMPAT_STAMP): $(COMPAT_DIR)/package.json $(COMPAT_DIR)/package-lock.json
	cd $(COMPAT_DIR) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed

run: install
	$(BIN)/sidecar serve $(ARGS)

test: install node node-mcp-client
	$(BIN)/pytest --ignore=tests/image $(PYTEST_ARGS)

# The container image, with podman or docker, whichever is here; on the
# official Python base by default, or BASE_IMAGE=local for a Debian base made
# from Debian's archive (no registry needed). `make test-image` runs it.
IMAGE ?= localhost/convex-oauth-sidecar:dev
BASE_IMAGE ?= python:3.11-slim-bookworm

image:
	bash deploy/image/build.sh $(IMAGE) $(BASE_IMAGE)

test-image: install node
	SIDECAR_IMAGE=$(IMAGE) $(BIN)/pytest -q tests/image $(PYTEST_ARGS)

# The Better Auth end-to-end tests again, on the oldest Better Auth allowed
# (`make test` runs the newest 1.6.x).
test-compat: install node-compat
	cp $(NODE_DIR)/server.mjs $(COMPAT_DIR)/server.mjs
	SIDECAR_NODE_DIR=$(COMPAT_DIR) $(BIN)/pytest -q tests/e2e $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check sidecar tests tools bench demo fuzz
	$(BIN)/ruff format --check sidecar tests tools bench demo fuzz
	$(BIN)/mypy
	$(BIN)/lint-imports
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
	rm -rf $(VENV) $(NODE_DIR)/node_modules $(COMPAT_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache
