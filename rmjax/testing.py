"""Helpers for checking conversions: variables that a fresh init would not give.

A fresh init has BN mean 0, var 1, scale 1, bias 0 — an identity BN that hides folding and
reserving bugs. `randomize_batchnorm` draws non-trivial values instead.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.extend import core as jex_core

from rmjax.models.conv import conv_impl
from rmjax.models.plain import PlainNet


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


def count_params(tree) -> int:
  """Number of scalars in a pytree of arrays (or of `jax.ShapeDtypeStruct`s)."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def eval_logits(model, variables, x):
  """`model.apply(variables, x, train=False)`, jitted, with float32 'highest' matmuls; a
  `PlainNet` dense (`structured=False`), so that equivalence tests check every kernel entry
  (tests/structured_test.py checks the structured form against it).

  One XLA program per model; op-by-op (eager) execution compiles every op separately, which
  is several times slower for the small networks of tests.
  """
  kwargs = {"structured": False} if isinstance(model, PlainNet) else {}
  with jax.default_matmul_precision("highest"):
    return jax.jit(functools.partial(model.apply, train=False, **kwargs))(variables, x)


def max_abs_difference(model, variables, plain, plain_variables, x) -> float:
  """Max |logits(model) - logits(plain)| on `x`, both in eval mode."""
  diff = eval_logits(model, variables, x) - eval_logits(plain, plain_variables, x)
  return float(jnp.max(jnp.abs(diff)))


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, tuple | list) else (value,):
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


def _count_residual_adds(jaxpr, tainted) -> int:
  """Adds whose two operands both depend on the network input (`tainted` vars)."""
  count = 0
  for eqn in jaxpr.eqns:
    in_taint = [isinstance(v, jex_core.Var) and v in tainted for v in eqn.invars]
    for sub in _sub_jaxprs(eqn):
      if len(sub.invars) == len(eqn.invars):
        inner = {v for v, t in zip(sub.invars, in_taint, strict=True) if t}
        count += _count_residual_adds(sub, inner)
    # Weights, biases and BN statistics are constants of the traced function; a residual
    # connection is the one place two input-dependent tensors are summed.
    if eqn.primitive.name == "add" and all(in_taint):
      count += 1
    if any(in_taint):
      tainted.update(eqn.outvars)
  return count


def count_residual_adds(fn, *args) -> int:
  """How many additions of two input-dependent tensors `fn(*args)` performs.

  Everything `fn` closes over (weights, biases, BN statistics) is a constant, so bias and BN
  shifts do not count; what is left in a ResNet is its residual connections.

  A ResNet-18 has 8 (one per block); a plain network has 0.

    >>> count_residual_adds(lambda x: plain.apply(plain_vars, x, structured=False), x)
    0
  """
  # On XLA's convolutions: the CPU formulations of depthwise convs add shifted taps, which are
  # additions of two input-dependent tensors too.
  jaxpr = _jaxpr_on_lax_convs(fn, *args)
  return _count_residual_adds(jaxpr, set(jaxpr.invars))


def _jaxpr_on_lax_convs(fn, *args):
  """The jaxpr of `fn(*args)` traced with XLA's convolutions, whatever a backend would run
  (`rmjax.models.conv`): the network's arithmetic, not its formulation."""
  with conv_impl("lax"):
    return jax.make_jaxpr(fn)(*args).jaxpr


def _valid_taps(size: int, kernel: int, stride: int, low: int, high: int, dilation: int) -> int:
  """(output position, kernel tap) pairs along one axis whose input is not padding."""
  out = (size + low + high - (kernel - 1) * dilation - 1) // stride + 1
  positions = np.arange(out)[:, None] * stride + np.arange(kernel)[None, :] * dilation - low
  return int(np.sum((positions >= 0) & (positions < size)))


def _conv_macs(eqn, padding: bool) -> int:
  out, lhs, kernel = eqn.outvars[0].aval, eqn.invars[0].aval, eqn.invars[1].aval
  dn = eqn.params["dimension_numbers"]  # lhs/rhs/out specs: (batch/out, feature/in, spatial...)
  per_tap = kernel.shape[dn.rhs_spec[1]]  # inputs per output channel (in / groups)
  if padding:
    taps = int(np.prod(out.shape)) * int(np.prod([kernel.shape[d] for d in dn.rhs_spec[2:]]))
    return taps * per_tap
  taps = out.shape[dn.out_spec[0]] * out.shape[dn.out_spec[1]]
  for i, (low, high) in enumerate(eqn.params["padding"]):
    taps *= _valid_taps(
      lhs.shape[dn.lhs_spec[2 + i]],
      kernel.shape[dn.rhs_spec[2 + i]],
      eqn.params["window_strides"][i],
      low,
      high,
      eqn.params["rhs_dilation"][i],
    )
  return taps * per_tap


def _count(jaxpr, padding: bool = True) -> tuple[int, int]:
  """`(MACs of convs and matmuls, elementwise and reduction FLOPs)` of a jaxpr."""
  macs = elementwise = 0
  for eqn in jaxpr.eqns:
    for sub in _sub_jaxprs(eqn):
      m, e = _count(sub, padding)
      macs, elementwise = macs + m, elementwise + e
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      macs += _conv_macs(eqn, padding)
    elif name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      macs += int(np.prod(eqn.outvars[0].aval.shape)) * int(
        np.prod([lhs.shape[d] for d in contract])
      )
    elif name in _ELEMENTWISE:
      elementwise += int(np.prod(eqn.outvars[0].aval.shape))
    elif name in _REDUCTIONS:
      elementwise += int(np.prod(eqn.invars[0].aval.shape))
  return macs, elementwise


# What XLA's cost analysis counts as one FLOP per element (HloCostAnalysis); data movement
# (slices, concatenations, broadcasts, pads) counts nothing.
_ELEMENTWISE = frozenset(
  "add sub mul div max min neg abs exp log rsqrt sqrt tanh logistic integer_pow pow select_n "
  "eq ne ge gt le lt convert_element_type".split()
)
_REDUCTIONS = frozenset(
  "reduce_sum reduce_max reduce_min reduce_window_max reduce_window_sum".split()
)


def count_macs(fn, *args, padding: bool = True) -> int:
  """Multiply-accumulates of the convolutions and matmuls `fn(*args)` performs.

  Counted from the jaxpr, so the residual and the plain network are measured the same way
  (papers' "FLOPs" usually mean these MACs). Grouped convs count `in / groups` per output.
  `padding=False` leaves out the kernel taps that fall on zero padding, as XLA's cost analysis
  does. Counted on XLA's convolutions whichever formulation a backend runs
  (`rmjax.models.conv`): the arithmetic of the network, not of its implementation.
  """
  return _count(_jaxpr_on_lax_convs(fn, *args), padding)[0]


def count_flops(fn, *args) -> int:
  """FLOPs of `fn(*args)` counted the way XLA's cost analysis counts them: 2 per multiply-add
  of convs and matmuls, taps on zero padding left out, plus one per element of elementwise ops
  and reductions (bias, ReLU, BN, pooling). From the jaxpr, without compiling, of the program
  as it runs here: a depthwise conv that runs as shifted multiply-adds counts those.

    >>> compiled = jax.jit(fn).lower(*args).compile()
    >>> count_flops(fn, *args) / compiled.cost_analysis()["flops"]   # ~1 (benchmarks check)
  """
  macs, elementwise = _count(jax.make_jaxpr(fn)(*args).jaxpr, padding=False)
  return 2 * macs + elementwise


def conversion_sizes(model, size: int, *, in_channels: int = 3, **convert_kwargs):
  """`((params, MACs) of model, (params, MACs) of its rm_convert result)` on one
  `size x size` input. From shapes only: no weights are drawn and nothing is compiled.

    >>> (p0, f0), (p1, f1) = conversion_sizes(models.create("resnet50"), 224)
  """
  from rmjax import transforms  # Deferred: transforms imports nothing from here.

  x = jax.ShapeDtypeStruct((1, size, size, in_channels), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  plain, plain_vars = jax.eval_shape(
    lambda v: transforms.rm_convert(model, v, **convert_kwargs), variables
  )
  # The dense form's MACs: the network's size, whatever form runs by default.
  dense = functools.partial(plain.apply, structured=False)
  return (
    (count_params(variables["params"]), count_macs(lambda v, x: model.apply(v, x), variables, x)),
    (count_params(plain_vars["params"]), count_macs(dense, plain_vars, x)),
  )
