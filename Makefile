# flowring: `make up` starts a local cluster on the embedded default model (or, with CLUSTER=FILE, a ring of
# boards over SSH), `make test` runs the tests.
# Both create .venv in the repository root and install what is missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL ?= qwen-coder
STAGES ?= auto
DTYPE ?= bfloat16
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 2
CLUSTER ?=

.PHONY: up down test lint venv clean

venv: $(STAMP)

# torch is pinned first: the local CPU build is taken, and the project's range then installs nothing more.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0 || $(BIN)/python -m pip install --quiet 'torch>=2.11'
	$(BIN)/python -m pip install --quiet -e '.[dev,gguf,humaneval]'
	touch $(STAMP)

# `make up CLUSTER=infra/lan.example.toml` starts the ring on the boards that file names, over SSH (its CURVE keys
# are created on the first run and kept after).
up: venv
ifeq ($(CLUSTER),)
	$(BIN)/flowring models pull $(MODEL)
	$(BIN)/flowring up --model $(MODEL) --stages $(STAGES) --dtype $(DTYPE)
else
	$(BIN)/flowring keys create --cluster $(CLUSTER)
	$(BIN)/flowring up --cluster $(CLUSTER)
endif

down: venv
	$(BIN)/flowring down

# pytest exit 5 means "no tests ran": that must fail, not pass silently.
# PYTEST_WORKERS pytest-xdist processes share the files, a whole file to one worker (its module-scoped rings and
# models are built once); PYTEST_WORKERS=0 runs everything in this one process.
test: venv
	$(BIN)/flowring models pull smollm2
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The house rules: ruff, the layering contract of pyproject.toml (docs/layout.md) and mypy on common/ and the
# service cores (configured in pyproject.toml).
lint: venv
	$(BIN)/ruff check common services tests
	$(BIN)/lint-imports
	$(BIN)/mypy common services/drafter/core.py services/stage/core.py services/verifier/core.py services/scheduler/core.py services/cores.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
