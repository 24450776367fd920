PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast demo demo-down bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python -m examples.demo

demo-down: $(STAMP)
	$(BIN)/python -m examples.demo down

bench: $(STAMP)
	$(BIN)/python -m simulations.bench control-plane

clean:
	rm -rf $(VENV) build *.egg-info
