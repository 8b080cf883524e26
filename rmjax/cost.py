"""What a network costs, counted from its jaxpr: parameters, multiply-adds, FLOPs, residual adds.

Counted from the traced program, so a residual network, its plain form and any execution of
them are measured the same way, without compiling anything. Convolutions are counted on XLA's
own convolutions whichever formulation a backend runs (`rmjax.models.conv`): the arithmetic of
the network, not of its implementation.

  >>> count_params(variables["params"])
  >>> count_macs(lambda v, x: model.apply(v, x, train=False), variables, x)
  >>> count_residual_adds(lambda x: plain.apply(plain_vars, x), x)   # 0 after RM
"""

from __future__ import annotations

import jax
import numpy as np
from jax.extend import core as jex_core

from rmjax.models.conv import conv_impl


def count_params(tree) -> int:
  """Number of scalars in a pytree of arrays (or of `jax.ShapeDtypeStruct`s)."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


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
