"""Fine-tuning a converted plain network: re-estimate the reserved channels' BN (Appendix A.2).

`rm_convert(..., keep_bn=True)` keeps every BatchNorm and makes the BN of each reserved channel
an identity by Eq. 3 — with placeholder statistics `(mean, var) = (0, 1)`, since the statistics
of the copied input are not known at conversion time. The network is exact in eval mode, but
training normalises with batch statistics, and a BN whose running statistics are far from its
input's would make fine-tuning unstable. Appendix A.2: pass the training data through the
network, use the measured mean and variance as the reserved channels' running statistics, and
set their weight and bias by Eq. 3 so that the network computes exactly what it did.

  >>> plain, variables = rmjax.load_plain("PLAIN")            # written with --keep_bn
  >>> batches = data.train_batches("cifar10", batch_size=128, seed=0)
  >>> variables = reestimate_reserved_batchnorm(plain, variables, batches, num_batches=10)
  >>> plain.apply(variables, x)                               # same logits as before

`train.py --config.init_from=PLAIN` does this before fine-tuning.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rmjax.models.plain import BatchNorm, PlainNet
from rmjax.transforms.batchnorm import BN_KEYS, concat_batchnorm


def replace_statistics(bn, mean, var, *, epsilon: float):
  """`bn` with running statistics `(mean, var)` and the same function. Eq. 3 generalised.

  A BN computes `(x - mean) * scale / sqrt(var + eps) + bias`. With
  `scale' = scale * sqrt(var' + eps) / sqrt(var + eps)` and
  `bias' = bias + (mean' - mean) * scale / sqrt(var + eps)` it computes the same for every `x`.
  For an identity BN of Eq. 3 (`scale = sqrt(var + eps)`, `bias = mean`) the result is again
  Eq. 3 with the new statistics. The rule holds for any BN, so it stays exact where the
  conversion moved a fused bias into the BN's mean (MobileNet, Eq. 5) and the BN is `x + shift`
  rather than the identity. It divides only by the old `sqrt(var + eps)`, never by the new one.

    >>> bn = identity_batchnorm(jnp.zeros(4), jnp.ones(4), epsilon=1e-5)
    >>> new = replace_statistics(bn, mean=m, var=v, epsilon=1e-5)
    >>> # new["scale"] == sqrt(v + 1e-5), new["bias"] == m, up to round-off
  """
  mean = jnp.asarray(mean, bn["mean"].dtype)
  var = jnp.asarray(var, bn["var"].dtype)
  ratio = bn["scale"] * jax.lax.rsqrt(bn["var"] + epsilon)  # what the BN multiplies x by
  return {
    "scale": bn["scale"] * jnp.sqrt((var + epsilon) / (bn["var"] + epsilon)),
    "bias": bn["bias"] + (mean - bn["mean"]) * ratio,
    "mean": mean,
    "var": var,
  }


def replace_reserved_statistics(bn, mean, var, *, reserved: int, epsilon: float):
  """`replace_statistics` on the last `reserved` channels of `bn` (the Eq. 3 identities of a
  fine-tuning-form BatchNorm); `mean` and `var` have `reserved` entries. The other channels are
  returned unchanged."""
  split = bn["mean"].shape[0] - reserved
  head = {k: bn[k][:split] for k in BN_KEYS}
  tail = replace_statistics({k: bn[k][split:] for k in BN_KEYS}, mean, var, epsilon=epsilon)
  return concat_batchnorm(head, tail)


def reserved_batchnorms(plain: PlainNet) -> dict[int, BatchNorm]:
  """`{layer index: BatchNorm}` for the BatchNorm layers of `plain` with reserved channels."""
  return {
    i: layer
    for i, layer in enumerate(plain.layers)
    if isinstance(layer, BatchNorm) and layer.reserved
  }


def _batch_moments_fn(plain: PlainNet, reserved: dict[int, int]):
  """A jittable `(variables, images) -> {i: (count, mean, m2)}`: the number of values per
  channel, per-channel mean and sum of squared deviations of the reserved channels of the input
  of every BatchNorm `layers_{i}` in `reserved` (`{i: number of reserved channels}`), over the
  batch and all pixels (fewer after a strided layer)."""

  def moments(variables, images):
    found = {}

    def record(next_fun, args, kwargs, context):
      module = context.module
      # The BN's input is what the layer before it produced; intercepting the call sees it
      # without re-running any prefix of the network.
      if isinstance(module, nn.BatchNorm) and context.method_name == "__call__":
        i = int(module.name.removeprefix("layers_"))
        if i in reserved:
          x = args[0][..., -reserved[i] :].astype(jnp.float32)
          x = x.reshape(-1, x.shape[-1])
          mean = jnp.mean(x, axis=0)
          found[i] = (x.shape[0], mean, jnp.sum(jnp.square(x - mean), axis=0))
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      # The logits are not needed: XLA drops every layer after the last reserved BN.
      plain.apply(variables, images, train=False)
    return found

  return moments


def _images(batches: Iterable, num_batches: int | None):
  batches = batches if num_batches is None else itertools.islice(batches, num_batches)
  for batch in batches:
    yield batch["image"] if isinstance(batch, Mapping) else batch


def reestimate_reserved_batchnorm(
  plain: PlainNet,
  variables,
  batches: Iterable,
  *,
  num_batches: int | None = None,
  out_shardings=None,
):
  """Re-estimates the running statistics of every reserved BN channel from data (A.2).

  Passes `batches` through `plain` in eval mode, measures the mean and (biased, as Flax's BN)
  variance of each reserved channel's BN input over all images and pixels, and sets them as
  that channel's statistics with `replace_statistics`, which keeps the BN's function — so the
  returned variables compute the same logits as `variables` (up to float32 round-off).
  Non-reserved channels and all other variables are returned unchanged.

  One pass suffices: the update changes no layer's function, so every BN input is the same
  before and after it, and all BNs can be measured together with the original variables.

  Args:
    plain: a `PlainNet`, usually `rm_convert(..., keep_bn=True)`'s or `load_plain`'s.
    variables: its `{"params", "batch_stats"}`. Never modified.
    batches: NHWC float arrays, or dicts with an `"image"` entry (as `data.train_batches`
      yields); training data, as the paper uses.
    num_batches: use only the first this many (`train_batches` is infinite).
    out_shardings: passed to `jax.jit` for the statistics; give a mesh's replicated sharding
      when the batches are global arrays sharded over several processes.

  Returns:
    New variables. Without reserved channels (a deploy-form or un-reserved network) they are
    `variables` itself and no batch is read.

  Raises:
    ValueError: `batches` yielded nothing.

  Example:
    >>> plain, variables = rm_convert(model, model_variables, keep_bn=True)
    >>> variables = reestimate_reserved_batchnorm(plain, variables, [images])
    >>> plain.apply(variables, x)            # == model.apply(model_variables, x, train=False)
  """
  targets = reserved_batchnorms(plain)
  if not targets:
    return variables
  moments = jax.jit(
    _batch_moments_fn(plain, {i: bn.reserved for i, bn in targets.items()}),
    out_shardings=out_shardings,
  )
  # Batches are combined on the host in float64 (Chan et al.'s parallel update), so the
  # estimate does not drift however many pixels it sums.
  totals: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
  for images in _images(batches, num_batches):
    for i, (n, mean_b, m2_b) in jax.device_get(moments(variables, images)).items():
      n, mean_b, m2_b = int(n), np.asarray(mean_b, np.float64), np.asarray(m2_b, np.float64)
      count, mean_a, m2_a = totals.get(i, (0, 0.0, 0.0))
      total = count + n
      delta = mean_b - mean_a
      totals[i] = (
        total,
        mean_a + delta * (n / total),
        m2_a + m2_b + delta**2 * (count * n / total),
      )
  if not totals:
    raise ValueError("reestimate_reserved_batchnorm: the batches yielded no images")

  params = dict(variables["params"])
  stats = dict(variables["batch_stats"])
  for i, layer in targets.items():
    name = f"layers_{i}"
    count, mean, m2 = totals[i]
    bn = {**params[name], **stats[name]}
    new = replace_reserved_statistics(
      bn, mean, m2 / count, reserved=layer.reserved, epsilon=layer.epsilon
    )
    params[name] = {**params[name], "scale": new["scale"], "bias": new["bias"]}
    stats[name] = {**stats[name], "mean": new["mean"], "var": new["var"]}
  return {**variables, "params": params, "batch_stats": stats}


__all__ = [
  "reestimate_reserved_batchnorm",
  "replace_reserved_statistics",
  "replace_statistics",
  "reserved_batchnorms",
]
