# The two commands of the README:  `make demo`  and  `make test`.
# Both set everything up on a fresh Debian machine (apt packages when root, a virtualenv).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup demo test lint
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install-system-packages
	scripts/install-system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[all,test]'
	touch $@

demo: setup
	$(BIN)/radflow demo

# static checks: formatting, lint, types, the layers and library owners
lint: setup
	$(BIN)/ruff format --check --quiet .
	$(BIN)/ruff check --quiet .
	$(BIN)/mypy
	PYTHON=$(BIN)/python scripts/lint-imports

test: lint
	TCP_NODELAY=1 $(BIN)/python -m pytest
