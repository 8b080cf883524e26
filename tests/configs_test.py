"""Every shipped config loads and builds its model (a typo in a config fails here, not after
the dataset has been prepared)."""

import importlib
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rmjax import data, run  # noqa: E402

CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_model(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  info = data.dataset_info(config.dataset)
  model = run.create_model(config, info.num_classes)
  x = jax.ShapeDtypeStruct((1, 32, 32, info.channels), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert logits.shape == (1, info.num_classes)
