# One-command set-up: every target builds .venv on first use (Python >= 3.11 and pip only).
#   make demo   core dependencies only (jax, flax, optax, orbax, tfds, ...): train + convert
#   make test   adds the test extra (torch CPU, onnx, hypothesis, ...): what CI runs
# Afterwards `source .venv/bin/activate`, and every command of the README runs as printed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: test demo convert-demo lint clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.core
	$(PY) -m pip install -e '.[test]'
	touch $@

## Run the whole default test suite (what .ci/run calls).
test: $(VENV)/.test
	$(PY) -m pytest -n 2 -q

## The main job on the embedded default: train configs/demo.py (offline), convert, compare.
demo: $(VENV)/.core
	$(PY) train.py --config configs/demo.py --workdir workdirs/demo

## Convert a ResNet-18 with random BN statistics and show the plain network (seconds).
convert-demo: $(VENV)/.core
	$(PY) -m rmjax.demo

## ruff over every Python file of the project (the library, scripts, configs, tests).
lint: $(VENV)/.test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
