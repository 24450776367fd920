PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv lint test test-fast demo demo-down bench deps clean

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# ruff (pyproject.toml: pycodestyle, pyflakes, bugbear, import order) over the whole tree, and
# mypy (setup.cfg) over the packages that must stay typed.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy storage cluster engine

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python -m examples.demo

demo-down: $(STAMP)
	$(BIN)/python -m examples.demo down

# System packages for the data-plane benchmark (HAProxy, nginx, wrk) and the clock-skew chaos
# scenario (libfaketime); Debian, as root. Nothing in `make test` needs them.
deps:
	apt-get install -y -q haproxy nginx wrk faketime

bench: $(STAMP)
	$(BIN)/python -m simulations.bench control-plane

clean:
	rm -rf $(VENV) build *.egg-info
