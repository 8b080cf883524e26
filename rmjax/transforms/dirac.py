"""Kernel shapes: Dirac (identity) kernels, padding a kernel, and grouped -> dense.

Kernels are Flax HWIO: `(kh, kw, in_features // groups, out_features)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def dirac_kernel(channels: int, kernel_size: int = 3, *, groups: int = 1, dtype=jnp.float32):
  """The identity convolution: output channel c copies input channel c. Eq. 2 (Sec. 4.1).

  Only the centre tap is non-zero, so with padding `kernel_size // 2` and any stride the
  output at (i, j) is the input at (stride*i, stride*j) — the sampling of a strided 1x1 conv,
  which is what lets a reserving conv carry a downsample block's stride (Appendix A.1 (b)).
  (Not under TensorFlow's "SAME" at stride 2, which pads low 0 on even sizes: the centre tap
  then reads `stride*i + 1`; `emit_conv` refuses that.) With `groups > 1` the kernel is
  grouped: shape `(k, k, channels // groups, channels)`.

    >>> dirac_kernel(4, 3).shape
    (3, 3, 4, 4)
  """
  if channels % groups:
    raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
  per_group = channels // groups
  c = kernel_size // 2
  shape = (kernel_size, kernel_size, per_group, channels)
  if np.prod(shape) > _LARGEST_CONSTANT and _staged():
    # Under jit a NumPy array is embedded in the program as a constant: the fastest to run (a
    # copy) but not to compile. ResNet-50's Dirac kernels are 180 MB of zeros; built from iotas
    # where large, XLA computes them inside the concatenation that consumes them, and
    # jax.jit(rm_convert) lowers and compiles in 1.1 s instead of 2.5 s (each call: ~60 ms
    # instead of ~45). RMNeXt's kernels all stay below the limit.
    h, w, i, o = (lax.broadcasted_iota(jnp.int32, shape, d) for d in range(4))
    return ((h == c) & (w == c) & (i == o % per_group)).astype(dtype)
  # Eagerly, NumPy costs no XLA compilation (each new shape of an iota would compile).
  out = np.arange(channels)
  kernel = np.zeros(shape, dtype)
  kernel[c, c, out % per_group, out] = 1
  return jnp.asarray(kernel)


_LARGEST_CONSTANT = 2**21  # elements (8 MB in float32)


def _staged() -> bool:
  """Whether jax is tracing here (under jit, eval_shape, ...): every new value is a tracer."""
  return isinstance(jnp.zeros(()), jax.core.Tracer)


def pad_kernel(kernel, kernel_size: int):
  """Zero-pads a kernel spatially (centred) to `kernel_size`, e.g. a 1x1 projection to 3x3.

  With padding `kernel_size // 2` the padded kernel computes what the original computed with
  its own padding `kh // 2` (Appendix A.1 (b): the 1x1 downsample kernel moved into a 3x3 conv).
  """
  kh, kw = kernel.shape[:2]
  if kh > kernel_size or (kernel_size - kh) % 2 or kh != kw:
    raise ValueError(f"cannot pad a {kh}x{kw} kernel to {kernel_size}x{kernel_size}")
  p = (kernel_size - kh) // 2
  return jnp.pad(kernel, ((p, p), (p, p), (0, 0), (0, 0)))


def grouped_to_dense(kernel, groups: int):
  """The dense kernel `(kh, kw, in, out)` equal to a grouped one: block-diagonal in (in, out)."""
  if groups == 1:
    return kernel
  kh, kw, in_per_group, out = kernel.shape
  if out % groups:
    raise ValueError(f"output channels ({out}) must be divisible by groups ({groups})")
  blocks = kernel.reshape(kh, kw, in_per_group, groups, out // groups)
  # dense[h, w, g, i, G, o] = kernel[h, w, i, G, o] if g == G else 0
  dense = jnp.einsum("hwiGo,gG->hwgiGo", blocks, jnp.eye(groups, dtype=kernel.dtype))
  return dense.reshape(kh, kw, groups * in_per_group, out)
