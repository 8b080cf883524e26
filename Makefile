# One-command set-up: every target builds .venv on first use (Python >= 3.11 and pip only).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: test demo lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $@

## Run the whole default test suite (what .ci/run calls).
test: $(VENV)/.installed
	$(PY) -m pytest -n 2 -q

## Convert a ResNet-18 with random BN statistics and show the plain network.
demo: $(VENV)/.installed
	$(PY) -m rmjax.demo

lint: $(VENV)/.installed
	$(PY) -m ruff check rmjax tests
	$(PY) -m ruff format --check rmjax tests

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
