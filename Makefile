# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install js run test lint bench soak clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# The JavaScript clients' packages (tests/js, pinned by its package-lock.json), for the tests that run them
# against a local subnet; without node those tests skip, saying so.
JS_DIR   := tests/js
JS_STAMP := $(JS_DIR)/node_modules/.installed

js:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) -s --no-print-directory $(JS_STAMP); \
	else echo "node/npm not found: the JavaScript client tests will be skipped"; fi

$(JS_STAMP): $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	cd $(JS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

run: install
	$(BIN)/sn1 localnet $(ARGS)

# Most tests wait on real servers and processes: 3 processes take the suite from ~11 to ~5.5 minutes on
# 2 cores. TEST_WORKERS=0 runs it in one process (for a debugger, or to time one test alone).
TEST_WORKERS ?= 3

# PYTHONDONTWRITEBYTECODE (set in some shells and CI images) made every pytest process re-rewrite the asserts
# of ~300 test and plugin modules (~2 s of CPU each) and every `sn1` child compile the node's sources again
# (~0.35 s each, and the suite starts hundreds): the test run caches both in __pycache__ (git-ignored).
test: install js
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check api neurons shared tests scripts

bench: install
	$(BIN)/python scripts/bench.py

# 20,000 requests through honest + faulty miners at concurrency 64; prints fds/tasks/RSS/Python blocks before and after.
# ARGS=--mix: over every endpoint, with the validator behind; ARGS="--mix --store redis" on REDIS_URL (or --redis-url).
soak: install
	$(BIN)/python scripts/soak.py $(ARGS)

clean:
	rm -rf $(VENV) localnet .pytest_cache $(JS_DIR)/node_modules  # never ./state: the default key store and validator scores
