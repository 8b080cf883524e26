"""Helpers for checking conversions: variables that a fresh init would not give.

A fresh init has BN mean 0, var 1, scale 1, bias 0 — an identity BN that hides folding and
reserving bugs. `randomize_batchnorm` draws non-trivial values instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.extend import core as jex_core


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


def max_abs_difference(model, variables, plain, plain_variables, x) -> float:
  """Max |logits(model) - logits(plain)| on `x`, both in eval mode, float32 'highest' matmuls."""
  with jax.default_matmul_precision("highest"):
    want = model.apply(variables, x, train=False)
    got = plain.apply(plain_variables, x, train=False)
  return float(jnp.max(jnp.abs(want - got)))


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, tuple | list) else (value,):
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


def _count_residual_adds(jaxpr) -> int:
  producer = {}
  count = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      producer[var] = eqn.primitive.name
    count += sum(_count_residual_adds(sub) for sub in _sub_jaxprs(eqn))
    if eqn.primitive.name != "add":
      continue
    shape = eqn.outvars[0].aval.shape
    # A bias or BN shift is added through a broadcast of a vector; a residual connection adds
    # two full feature maps that both come from the network.
    if all(
      isinstance(v, jex_core.Var)
      and len(shape) == 4
      and v.aval.shape == shape
      and producer.get(v) != "broadcast_in_dim"
      for v in eqn.invars
    ):
      count += 1
  return count


def count_residual_adds(fn, *args) -> int:
  """How many additions of two NHWC feature maps `fn(*args)` performs (bias adds excluded).

  A ResNet-18 has 8 (one per block); a plain network has 0.

    >>> count_residual_adds(lambda x: plain.apply(plain_vars, x), x)
    0
  """
  return _count_residual_adds(jax.make_jaxpr(fn)(*args).jaxpr)
