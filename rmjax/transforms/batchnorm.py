"""BatchNorm rules: fold a BN into the conv before it, and the identity BN of Eq. 3.

A BN is the dict `{"scale", "bias", "mean", "var"}` (Flax keeps the first two in `params` and the
last two in `batch_stats`); it computes `(x - mean) * scale / sqrt(var + eps) + bias`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BN_KEYS = ("scale", "bias", "mean", "var")


def fold_batchnorm(kernel, bn, *, epsilon: float, bias=None):
  """Folds `bn` into the conv (or dense) layer before it: returns `(kernel, bias)`.

  The kernel's last axis is its output axis (HWIO for convs, IO for dense), so this works for
  grouped convs too: each output channel is scaled on its own.

    >>> k, b = fold_batchnorm(kernel, {"scale": g, "bias": beta, "mean": mu, "var": v},
    ...                       epsilon=1e-5)
    >>> # conv(x, k) + b == bn(conv(x, kernel))
  """
  # Same expression as flax.linen.BatchNorm, so folded and unfolded round alike.
  mul = bn["scale"] * jax.lax.rsqrt(bn["var"] + epsilon)
  conv_bias = jnp.zeros_like(bn["mean"]) if bias is None else bias
  return kernel * mul, (conv_bias - bn["mean"]) * mul + bn["bias"]


def identity_batchnorm(mean, var, *, epsilon: float):
  """A BN that returns its input for running statistics `(mean, var)`. Eq. 3 (Sec. 4.1).

  With `scale = sqrt(var + eps)` and `bias = mean`, `(x - mean) * scale / sqrt(var + eps) + bias`
  is `x`. Used for the reserved channels of the fine-tuning form (Appendix A.2), where the
  statistics may later be re-estimated from data and this rule applied again.
  """
  return {"scale": jnp.sqrt(var + epsilon), "bias": mean, "mean": mean, "var": var}


def concat_batchnorm(a, b):
  """Channel-wise concatenation of two BN dicts."""
  return {k: jnp.concatenate([a[k], b[k]]) for k in BN_KEYS}
