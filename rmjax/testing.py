"""Helpers for checking conversions: variables that a fresh init would not give.

A fresh init has BN mean 0, var 1, scale 1, bias 0 — an identity BN that hides folding and
reserving bugs. `randomize_batchnorm` draws non-trivial values instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import traverse_util


def randomize_batchnorm(variables, key, *, zero_scale_fraction: float = 0.0):
  """Returns a copy of `variables` with every BN's scale, bias, mean and var drawn at random.

  Scales are drawn in +-[0.3, 1.2] (both signs), biases and means N(0, 0.3), variances in
  [0.3, 2]. With `zero_scale_fraction > 0` that fraction of scales is set to exactly 0 (what
  network slimming produces). Leaves other than BN are kept.

    >>> variables = randomize_batchnorm(model.init(key, x, train=False), jax.random.key(1))
  """
  params = traverse_util.flatten_dict(variables["params"])
  stats = traverse_util.flatten_dict(variables.get("batch_stats", {}))
  keys = iter(jax.random.split(key, 5 * max(1, len(stats))))
  new_params, new_stats = dict(params), dict(stats)
  for path, mean in stats.items():
    if path[-1] != "mean":
      continue
    bn = path[:-1]
    shape, dtype = mean.shape, mean.dtype
    magnitude = jax.random.uniform(next(keys), shape, dtype, 0.3, 1.2)
    sign = jnp.where(jax.random.bernoulli(next(keys), 0.8, shape), 1.0, -1.0).astype(dtype)
    scale = magnitude * sign
    if zero_scale_fraction:
      scale = jnp.where(jax.random.uniform(next(keys), shape) < zero_scale_fraction, 0.0, scale)
    new_params[bn + ("scale",)] = scale
    new_params[bn + ("bias",)] = 0.3 * jax.random.normal(next(keys), shape, dtype)
    new_stats[bn + ("mean",)] = 0.3 * jax.random.normal(next(keys), shape, dtype)
    new_stats[bn + ("var",)] = jax.random.uniform(next(keys), shape, dtype, 0.3, 2.0)
  out = dict(variables)
  out["params"] = traverse_util.unflatten_dict(new_params)
  if stats:
    out["batch_stats"] = traverse_util.unflatten_dict(new_stats)
  return out
