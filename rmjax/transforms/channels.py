"""Choosing and removing channels: what `prune` and `prune_resnet` share.

Both read BN scales on the host (the kept channels decide array shapes, so none of this runs
under `jax.jit`) and cut arrays with NumPy indices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def abs_scales(scale) -> np.ndarray:
  """|BN scale| on the host, float64; a clear error under jax.jit (values pick shapes)."""
  try:
    return np.abs(np.asarray(scale, np.float64))
  except jax.errors.TracerArrayConversionError:
    raise ValueError(
      "prune chooses the architecture from the BN scales' values, so it cannot run under "
      "jax.jit; call it on concrete arrays"
    ) from None


def kept_channels(score: np.ndarray, threshold: float) -> np.ndarray:
  """Indices of the channels whose score is not below `threshold`, never none: where all are
  below, the best one stays. NaN scores are kept, as at threshold 0."""
  keep = np.flatnonzero(~(score < threshold))
  return keep if keep.size else np.array([int(np.argmax(score))])


def take(a, indices, axis=0):
  # On the host: the indices are concrete anyway, and jnp.take would compile one XLA program
  # per shape, seconds for a deep network on CPU.
  return jnp.asarray(np.take(np.asarray(a), indices, axis=axis))


def constant_input_shift(kernel, channels: np.ndarray, values: np.ndarray) -> np.ndarray:
  """What input `channels` held at constant `values` add to each output of a conv (HWIO) or
  dense (IO) `kernel`: `sum_c values[c] * sum_taps kernel[..., c, :]`.

  Removing such channels and adding this to the consumer's bias (or subtracting it from the
  running mean of its BN) keeps its outputs: exactly for a 1x1 conv or a dense layer, and for a
  k x k conv away from the zero-padded border, where the constant met padding instead.
  """
  k = np.asarray(kernel, np.float64)
  per_channel = k.reshape(-1, k.shape[-2], k.shape[-1]).sum(axis=0)  # (in, out)
  return np.asarray(values, np.float64) @ per_channel[channels]


def without_input_shift(batch_stats, shift: np.ndarray):
  """The running statistics of a BN whose input lost `shift` (the removed channels' constant
  contribution, `constant_input_shift`): a lower mean gives the same outputs."""
  mean = batch_stats["mean"]
  return {**batch_stats, "mean": jnp.asarray(np.asarray(mean, np.float64) - shift, mean.dtype)}
