# One-command set-up: every target builds .venv on first use (Python >= 3.11 and pip only).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: test demo convert-demo lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $@

## Run the whole default test suite (what .ci/run calls).
test: $(VENV)/.installed
	$(PY) -m pytest -n 2 -q

## The main job on the embedded default: train configs/demo.py (offline), convert, compare.
demo: $(VENV)/.installed
	$(PY) train.py --config configs/demo.py --workdir workdirs/demo

## Convert a ResNet-18 with random BN statistics and show the plain network (seconds).
convert-demo: $(VENV)/.installed
	$(PY) -m rmjax.demo

lint: $(VENV)/.installed
	$(PY) -m ruff check rmjax tests configs scripts train.py
	$(PY) -m ruff format --check rmjax tests configs scripts train.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
