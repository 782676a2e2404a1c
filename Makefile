# The two commands of the README:  `make demo`  and  `make test`.
# Both set everything up on a fresh Debian machine (apt packages when root, a virtualenv).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup demo test lint images images-test constraints
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/install-system-packages
	scripts/install-system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[all,test]'
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

# every image of skaffold.yaml, from the Dockerfiles users build, with buildah (docs/deploy.md)
images: setup
	PYTHON=$(BIN)/python scripts/build-images

# ... then each one smoke-run against real SeaweedFS, dcmtk and CloudEvents (tests/images/)
images-test: images
	RADFLOW_IMAGES_TEST=1 TCP_NODELAY=1 $(BIN)/python -m pytest -p no:cacheprovider tests/images

# the pins CI and the images install, after a change to pyproject.toml's dependencies
constraints: setup
	{ sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^#'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
