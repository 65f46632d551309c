# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench soak clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

run: install
	$(BIN)/sn1 localnet $(ARGS)

# Most tests wait on real servers and processes: 3 processes take the suite from ~11 to ~5.5 minutes on
# 2 cores. TEST_WORKERS=0 runs it in one process (for a debugger, or to time one test alone).
TEST_WORKERS ?= 3

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check api neurons shared tests scripts

bench: install
	$(BIN)/python scripts/bench.py

# 20,000 requests through honest + faulty miners at concurrency 64; prints fds/tasks/RSS before and after.
soak: install
	$(BIN)/python scripts/soak.py $(ARGS)

clean:
	rm -rf $(VENV) localnet .pytest_cache  # never ./state: the default key store and validator scores
