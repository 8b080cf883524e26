"""Random variables a fresh init would not give: He-scaled kernels, and BN statistics that are
not the identity.

A fresh init has BN mean 0, var 1, scale 1, bias 0 — an identity BN that hides folding and
reserving bugs. `randomize_batchnorm` draws non-trivial values instead; `random_variables` draws
a whole network's. Benchmarks time networks with them; tests check conversions with them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


def _draw_batchnorm(rng, shape, zero_scale_fraction):
  magnitude = rng.uniform(0.3, 1.2, shape)
  scale = magnitude * np.where(rng.uniform(size=shape) < 0.8, 1.0, -1.0)
  scale = np.where(rng.uniform(size=shape) < zero_scale_fraction, 0.0, scale)
  return {
    "scale": scale,
    "bias": 0.3 * rng.standard_normal(shape),
    "mean": 0.3 * rng.standard_normal(shape),
    "var": rng.uniform(0.3, 2.0, shape),
  }


def randomize_batchnorm(variables, seed: int = 0, *, zero_scale_fraction: float = 0.0):
  """Returns a copy of `variables` with every BN's scale, bias, mean and var drawn at random.

  Scales are drawn in +-[0.3, 1.2] (both signs), biases and means N(0, 0.3), variances in
  [0.3, 2]. With `zero_scale_fraction > 0` that fraction of scales is set to exactly 0 (what
  network slimming produces). Other leaves are kept. Draws with NumPy, so it costs no XLA
  compilation (which dominates small-model tests on CPU).

    >>> variables = randomize_batchnorm(model.init(key, x, train=False), seed=1)
  """
  rng = np.random.default_rng(seed)
  params = traverse_util.flatten_dict(variables["params"])
  stats = traverse_util.flatten_dict(variables.get("batch_stats", {}))
  for path, mean in stats.items():
    if path[-1] != "mean":
      continue
    bn = path[:-1]
    drawn = _draw_batchnorm(rng, mean.shape, zero_scale_fraction)
    for name, collection in (("scale", params), ("bias", params), ("mean", stats), ("var", stats)):
      collection[bn + (name,)] = jnp.asarray(drawn[name], mean.dtype)
  out = dict(variables)
  out["params"] = traverse_util.unflatten_dict(params)
  if stats:
    out["batch_stats"] = traverse_util.unflatten_dict(stats)
  return out


def random_variables(model, x, seed: int = 0, *, zero_scale_fraction: float = 0.0):
  """Variables for `model` on inputs like `x`, all drawn with NumPy: He-scaled kernels, small
  random biases and random BN (see `randomize_batchnorm`). Same structure as `model.init`.

  Use it instead of `model.init` + `randomize_batchnorm` where compile time matters: it traces
  the model once for shapes (`jax.eval_shape`) and compiles nothing.
  """
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in), leaf.dtype)
    return jnp.asarray(0.1 * rng.standard_normal(leaf.shape), leaf.dtype)

  variables = jax.tree_util.tree_map_with_path(draw, abstract)
  return randomize_batchnorm(variables, seed + 1, zero_scale_fraction=zero_scale_fraction)
