"""Fusing consecutive linear layers (Sec. 4.4, Eq. 5).

After RM, a MobileNetV2 block's projecting pointwise ConvBN is followed directly by the next
block's expanding pointwise ConvBN with no activation between them: two affine maps that compose
into one. In HWIO, `z = (x @ W + B) @ W' + B' = x @ (W W') + (B W' + B')`.
"""

from __future__ import annotations

import jax.numpy as jnp


def fuse_pointwise(first, second):
  """Fuses two deploy-form 1x1 conv layers `{kernel, bias}` applied one after the other. Eq. 5.

  Both kernels are `(1, 1, in, out)`; the result computes `second(first(x))` in one layer.
  A stride on `first` carries over (a 1x1 conv samples pixels independently). Inputs are not
  modified.

    >>> fused = fuse_pointwise({"kernel": w1, "bias": b1}, {"kernel": w2, "bias": b2})
    >>> fused["kernel"].shape      # (1, 1, w1.shape[2], w2.shape[3])
  """
  w1, w2 = first["kernel"], second["kernel"]
  if w1.shape[:2] != (1, 1) or w2.shape[:2] != (1, 1):
    raise ValueError(f"fuse_pointwise needs two 1x1 kernels, got {w1.shape[:2]} and {w2.shape[:2]}")
  if w1.shape[3] != w2.shape[2]:
    raise ValueError(
      f"the first layer has {w1.shape[3]} outputs but the second takes {w2.shape[2]} inputs"
    )
  a, b = w1[0, 0], w2[0, 0]  # (in, mid), (mid, out)
  kernel = jnp.matmul(a, b, precision="highest")[None, None]
  bias = jnp.matmul(first["bias"], b, precision="highest") + second["bias"]
  return {"kernel": kernel, "bias": bias}
