"""Fusing consecutive linear layers (Sec. 4.4, Eq. 5).

After RM, a MobileNetV2 block's projecting pointwise ConvBN is followed directly by the next
block's expanding pointwise ConvBN with no activation between them: two affine maps that compose
into one. In HWIO, `z = (x @ W + B) @ W' + B' = x @ (W W') + (B W' + B')`.
"""

from __future__ import annotations

import jax.numpy as jnp

from rmjax.transforms.batchnorm import fold_batchnorm


def fuse_pointwise(first, second, *, epsilon: float = 1e-5):
  """Fuses two 1x1 conv layers applied one after the other into one layer. Eq. 5.

  Layers are RM conv layer dicts (see `transforms.rm`), in either form: `{kernel, bias}` or
  `{kernel, bn}`. Both kernels are `(1, 1, in, out)`. `first`'s BN (if any) is folded; the
  result has `second`'s form — in the fine-tuning form `second`'s BN is kept and the folded
  bias `B W'` moves into its running mean, so the BN still sees what it saw before. A stride on
  `first` carries over (a 1x1 conv samples pixels independently). Inputs are not modified.

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
  if "bn" in first:
    w1, b1 = fold_batchnorm(w1, first["bn"], epsilon=epsilon)
  else:
    b1 = first["bias"]
  b = w2[0, 0]  # (mid, out)
  kernel = jnp.matmul(w1[0, 0], b, precision="highest")[None, None]
  shift = jnp.matmul(b1, b, precision="highest")
  if "bn" in second:
    bn = {**second["bn"], "mean": second["bn"]["mean"] - shift}
    return {**second, "kernel": kernel, "bn": bn}
  return {"kernel": kernel, "bias": shift + second["bias"]}
