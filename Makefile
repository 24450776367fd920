PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv lint test test-fast demo demo-down bench deps lab-deps clean

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

test: lint lab-deps
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

# System tools of the network lab (simulations/lab.py, tests/lab): iproute2, nftables, arping,
# tcpdump. `make test` installs the missing ones when it runs as root on Debian (CI does); a tool
# already on PATH costs nothing. Without root or apt-get it installs nothing and says so: the lab
# tests then skip, each with the reason.
LAB_TOOLS := ip:iproute2 nft:nftables arping:iputils-arping tcpdump:tcpdump

lab-deps:
	@missing=""; \
	for pair in $(LAB_TOOLS); do \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "lab-deps: not installing$$missing (needs root and apt-get); the network lab tests will skip"; exit 0; \
	fi; \
	echo "lab-deps: installing$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y -q --no-install-recommends $$missing >/dev/null \
	  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; }

bench: $(STAMP)
	$(BIN)/python -m simulations.bench control-plane

clean:
	rm -rf $(VENV) build *.egg-info
