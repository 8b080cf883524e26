"""Exact alternative formulations of one 2-D convolution, for XLA:CPU's slow paths.

Every function here computes what

  lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                           feature_group_count=groups)

computes (NHWC input, HWIO kernel, `pads` = ((top, bottom), (left, right)), non-negative), to
float32 round-off, in value and in gradients (tests/conv_test.py). They differ only in the HLO
they give XLA, and so in speed: XLA:CPU runs a grouped or depthwise `conv_general_dilated`
through a generic loop up to 40x slower than PyTorch (openxla/xla#34273), and its dense
weight-gradient convolution ~4x slower than the forward conv of the same FLOPs.

  shifted  depthwise (groups == in channels, out = m * in): a sum over the k*k taps of strided
           slices of the padded input times each channel's tap weight. Elementwise, so XLA fuses
           it into one loop, and its autodiff (pads, slices, reductions) fuses as well.
  split    grouped: one dense conv per group, concatenated (XLA's dense conv is fast).
  grouped  grouped: a per-group contraction per tap (einsum with a group batch axis).
  matmul   1x1 kernels, any stride and groups: a strided slice, then a dot.
  wgrad    a dense conv whose forward and input gradient are XLA's and whose weight gradient is
           one dot per tap (`jax.custom_vjp`), for the shapes where XLA's is slower.

`rmjax.models.conv` chooses between them per layer shape and backend.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def out_size(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> int:
  """Output length of one spatial axis (what lax computes for a VALID conv of the padded axis)."""
  return (size + pads[0] + pads[1] - kernel) // stride + 1


def lax_conv(x, kernel, strides: tuple[int, int], pads: Pads, groups: int, precision=None):
  """XLA's own convolution: the reference every other formulation equals."""
  return lax.conv_general_dilated(
    x,
    kernel,
    strides,
    pads,
    dimension_numbers=DIMENSION_NUMBERS,
    feature_group_count=groups,
    precision=precision,
  )


def taps(x, kernel_hw: tuple[int, int], strides: tuple[int, int], pads: Pads):
  """`[(i, j, window)]` over the kernel's taps: `window[n, h, w] = xpad[n, h*sh + i, w*sw + j]`,
  each of the output's spatial size. The windows are slices of one padded array, so XLA fuses
  them into whatever consumes them instead of copying."""
  (kh, kw), (sh, sw) = kernel_hw, strides
  ho = out_size(x.shape[1], kh, sh, pads[0])
  wo = out_size(x.shape[2], kw, sw, pads[1])
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0))) if any(map(any, pads)) else x
  n, c = x.shape[0], x.shape[3]
  return [
    (
      i,
      j,
      lax.slice(
        xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1)
      ),
    )
    for i in range(kh)
    for j in range(kw)
  ]


def _shifted_forward(x, kernel, strides: tuple[int, int], pads: Pads):
  multiplier = kernel.shape[3] // x.shape[-1]
  if multiplier > 1:
    x = jnp.repeat(x, multiplier, axis=-1)
  y = None
  for i, j, window in taps(x, kernel.shape[:2], strides, pads):
    term = window * kernel[i, j, 0]
    y = term if y is None else y + term
  return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def shifted(x, kernel, strides: tuple[int, int], pads: Pads, groups: int, precision=None):
  """Depthwise conv (`groups == x.shape[-1]`, kernel `(kh, kw, 1, m * groups)`) as a sum of
  shifted multiply-adds. Output channel `c * m + j` reads input channel `c`, as in lax."""
  del precision  # elementwise float32 products: nothing to choose
  c = x.shape[-1]
  if groups != c or kernel.shape[2] != 1:
    raise ValueError(f"shifted is for depthwise convs; got {c} channels in {groups} groups")
  return _shifted_forward(x, kernel, strides, pads)


def _shifted_fwd(x, kernel, strides, pads, groups, precision):
  return shifted(x, kernel, strides, pads, groups, precision), (x, kernel)


def _shifted_bwd(strides, pads, groups, precision, residuals, dy):
  del groups, precision
  x, kernel = residuals
  # The input gradient as autodiff writes it (pads of dy times the taps) fuses into one loop.
  _, input_vjp = jax.vjp(lambda x: _shifted_forward(x, kernel, strides, pads), x)
  (dx,) = input_vjp(dy)
  multiplier = kernel.shape[3] // x.shape[-1]
  if multiplier > 1:
    x = jnp.repeat(x, multiplier, axis=-1)
  # The kernel gradient is a sum over (n, h, w) of window * dy per tap. Autodiff gives one
  # reduction per tap, each a pass over dy; one variadic reduction over (h, w) reads dy once for
  # all taps and keeps the batch axis, which XLA:CPU splits over its threads (~5x faster).
  products = [window * dy for _, _, window in taps(x, kernel.shape[:2], strides, pads)]
  zeros = [jnp.zeros((), dy.dtype)] * len(products)
  sums = lax.reduce(products, zeros, _add_all, (1, 2))
  dk = jnp.stack(sums).sum(axis=1)  # (taps, channels): the batch sum last
  return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


def _add_all(a, b):
  return [u + v for u, v in zip(a, b, strict=True)]


shifted.defvjp(_shifted_fwd, _shifted_bwd)


def split(
  x, kernel, strides: tuple[int, int], pads: Pads, groups: int, precision=None, dense=lax_conv
):
  """Grouped conv as `groups` dense convs (each by `dense`, same signature), concatenated."""
  ci, co = x.shape[-1] // groups, kernel.shape[-1] // groups
  ys = [
    dense(
      x[..., g * ci : (g + 1) * ci], kernel[..., g * co : (g + 1) * co], strides, pads, 1, precision
    )
    for g in range(groups)
  ]
  return ys[0] if groups == 1 else jnp.concatenate(ys, axis=-1)


def grouped(x, kernel, strides: tuple[int, int], pads: Pads, groups: int, precision=None):
  """Grouped conv as, per tap, one contraction over each group's input channels (the group a
  batch axis of the dot), summed over the taps."""
  n, ci = x.shape[0], x.shape[-1] // groups
  co = kernel.shape[-1] // groups
  by_group = kernel.reshape(*kernel.shape[:3], groups, co)
  y = None
  for i, j, window in taps(x, kernel.shape[:2], strides, pads):
    w = window.reshape(*window.shape[:3], groups, ci)
    term = jnp.einsum("nhwgi,igo->nhwgo", w, by_group[i, j], precision=precision)
    y = term if y is None else y + term
  return y.reshape(n, *y.shape[1:3], groups * co)


def matmul(x, kernel, strides: tuple[int, int], pads: Pads, groups: int, precision=None):
  """A 1x1 conv (any stride, padding, groups) as a strided slice and a dot per group."""
  if kernel.shape[:2] != (1, 1):
    raise ValueError(f"matmul is for 1x1 kernels; got {kernel.shape[:2]}")
  ((_, _, window),) = taps(x, (1, 1), strides, pads)
  ci, co = x.shape[-1] // groups, kernel.shape[-1] // groups
  w = kernel[0, 0]
  ys = [
    jnp.dot(window[..., g * ci : (g + 1) * ci], w[:, g * co : (g + 1) * co], precision=precision)
    for g in range(groups)
  ]
  return ys[0] if groups == 1 else jnp.concatenate(ys, axis=-1)


def weight_grad_taps(
  x, dy, kernel_hw: tuple[int, int], strides: tuple[int, int], pads: Pads, precision=None
):
  """d loss / d kernel of a dense conv, given its input `x` and output cotangent `dy`: one dot
  per tap, `window^T dy` over all (n, h, w) — XLA:CPU runs these as plain GEMMs, faster than the
  convolution it would otherwise emit for the weight gradient on large images (measured in
  docs/conv_speed.md)."""
  k = dy.shape[-1]
  flat_dy = dy.reshape(-1, k)
  grads = [
    lax.dot_general(
      window.reshape(-1, window.shape[-1]),
      flat_dy,
      (((0,), (0,)), ((), ())),
      precision=precision,
    )
    for _, _, window in taps(x, kernel_hw, strides, pads)
  ]
  return jnp.stack(grads).reshape(*kernel_hw, x.shape[-1], k)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def wgrad(x, kernel, strides: tuple[int, int], pads: Pads, groups: int, precision=None):
  """A dense conv: XLA's forward and input gradient, `weight_grad_taps` for the kernel's."""
  return lax_conv(x, kernel, strides, pads, groups, precision)


def _wgrad_fwd(x, kernel, strides, pads, groups, precision):
  return lax_conv(x, kernel, strides, pads, groups, precision), (x, kernel)


def _wgrad_bwd(strides, pads, groups, precision, residuals, dy):
  x, kernel = residuals
  if groups != 1:
    raise ValueError("wgrad is for dense convs (groups == 1)")
  _, input_vjp = jax.vjp(lambda x: lax_conv(x, kernel, strides, pads, groups, precision), x)
  (dx,) = input_vjp(dy)
  dk = weight_grad_taps(x, dy, kernel.shape[:2], strides, pads, precision)
  return dx, dk.astype(kernel.dtype)


wgrad.defvjp(_wgrad_fwd, _wgrad_bwd)
