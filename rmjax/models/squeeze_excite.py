"""Squeeze-and-excitation (Hu et al. 2018), on all channels or on the leading ones only.

`SqueezeExcitation(reduced)` gates every channel of its input by
`sigmoid(fc2(relu(fc1(mean over H, W))))` (Hu et al., Eq. 2-3; `fc1` reduces to `reduced`
units, `fc2` expands back). With `channels=C` it reads and gates the first C channels only and
returns the others untouched (no arithmetic on them at all): what an RM-converted network needs,
whose reserved channels ride along behind the block's own (`rmjax.models.plain.SqueezeExcite`).
The SE blocks (`rmjax.models.se`) and the plain layer share this module, so the variables
(`fc1`, `fc2`: Dense kernel and bias) copy over unchanged.

  >>> se = SqueezeExcitation(4, channels=16)     # on a 24-channel input: 8 pass through
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


class SqueezeExcitation(nn.Module):
  """Channel gating by global context; `channels` (None: all) leading channels are gated."""

  reduced: int
  channels: int | None = None

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    c = features if self.channels is None else self.channels
    if not 0 < c <= features:
      raise ValueError(f"squeeze-and-excitation of {c} channels on a {features}-channel input")
    # Static slices, not indexing: indexing a batch-polymorphic array (jax.export) can lower to
    # a gather.
    gated = x if c == features else lax.slice_in_dim(x, 0, c, axis=-1)
    s = jnp.mean(gated, axis=(1, 2))
    s = nn.relu(nn.Dense(self.reduced, name="fc1")(s))
    s = nn.sigmoid(nn.Dense(c, name="fc2")(s))
    y = gated * s[:, None, None, :].astype(x.dtype)
    if c == features:
      return y
    return jnp.concatenate([y, lax.slice_in_dim(x, c, features, axis=-1)], axis=-1)
