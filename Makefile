# The two set-up commands: `make demo` runs the main job, `make test` runs every check.
# Both create .venv when it is missing and install the project into it (torch pinned to the
# CPU build that lies on local disk; on a GPU machine install torch yourself first).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.kedge-installed
EXTRAS ?= dev

.PHONY: install test demo lint typecheck contracts genproto-check pytest clean

# A strict editable install links the files that exist at install time; when the set of package
# files changes, the project is reinstalled (without dependencies, a few seconds).
TREE_HASH := $(shell find agent coordinator ckpt hooks proto -type f \( -name '*.py' -o -name '*.pyi' \
	-o -name 'py.typed' -o -name '*.proto' \) 2>/dev/null | sort | cksum | cut -d' ' -f1)
TREE_STAMP := $(VENV)/.kedge-tree-$(TREE_HASH)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[$(EXTRAS)]' --config-settings editable_mode=strict
	rm -f $(VENV)/.kedge-tree-*
	touch $@

$(TREE_STAMP): $(STAMP)
	rm -f $(VENV)/.kedge-tree-*
	$(PY) -m pip install -q --no-deps -e . --config-settings editable_mode=strict
	touch $@

install: $(TREE_STAMP)

test: $(TREE_STAMP) lint typecheck contracts genproto-check pytest

lint: $(TREE_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(TREE_STAMP)
	$(BIN)/mypy -p kedge.agent -p kedge.coordinator -p kedge.ckpt -p kedge.hooks -p kedge.proto

contracts: $(TREE_STAMP)
	$(BIN)/lint-imports

genproto-check: $(TREE_STAMP)
	PYTHON=$(abspath $(PY)) scripts/verify-genproto

# -n is not used: the suite starts real multi-process jobs and services and is sized for 2 cores.
pytest: $(TREE_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

demo: $(TREE_STAMP)
	$(BIN)/kedge demo

clean:
	rm -rf build *.egg-info .mypy_cache .ruff_cache .pytest_cache
