"""The RM operation on one convolution at a time (Sec. 4.1, Appendix A.1, A.2).

A *conv layer* here is a dict in one of two forms:
  - deploy form:      `{"kernel": K, "bias": b}` — BN already folded in;
  - fine-tuning form: `{"kernel": K, "bn": {"scale", "bias", "mean", "var"}}` — conv without
    bias followed by its BatchNorm (Appendix A.2).
Every function takes and returns such dicts, creates new arrays and never edits its inputs.

A residual block `out = relu(F(x) + S(x))` with `x >= 0` becomes plain by
  1. `reserve` on its first conv: extra output channels that copy `x` (Dirac kernels, Eq. 2) and
     pass the BN (Eq. 3) and the ReLU unchanged because `x >= 0`;
  2. `reserve_grouped` on any middle conv: the copied channels ride along as identity groups;
  3. `merge` on its last conv: extra input columns that add `S(x)` (Eq. 4) — the Dirac kernel for
     an identity shortcut, the BN-folded projection for a downsample block (A.1 method (b)).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from rmjax.transforms.batchnorm import concat_batchnorm, identity_batchnorm
from rmjax.transforms.dirac import dirac_kernel, grouped_to_dense, pad_kernel


def _append_outputs(layer, kernel, num_new: int, *, epsilon: float, gain=None):
  """`layer` with kernel `kernel` whose last `num_new` outputs are pass-through channels,
  scaled by `gain` (see `reserve`) in the BN (fine-tuning form) or in the kernel's new columns
  (deploy form)."""
  if "bn" in layer:
    dtype = layer["bn"]["mean"].dtype
    zeros = jnp.zeros((num_new,), dtype)
    if gain is None:
      # Statistics of the copied input are not known here; (0, 1) keeps Eq. 3 exact in eval
      # mode, and fine-tuning re-estimates them from data (Appendix A.2).
      identity = identity_batchnorm(zeros, jnp.ones((num_new,), dtype), epsilon=epsilon)
    else:
      # `scale x / sqrt(var + eps)`: the gain's own BN scale, where network slimming reads a
      # channel's importance (not the gain itself, which also holds 1 / sigma).
      identity = {"scale": gain["scale"], "bias": zeros, "mean": zeros, "var": gain["var"]}
    # "reserved" counts the trailing identity channels: static structure that the plain
    # BatchNorm records, so that fine-tuning can re-estimate their statistics (A.2).
    return {
      "kernel": kernel,
      "bn": concat_batchnorm(layer["bn"], identity),
      "reserved": layer.get("reserved", 0) + num_new,
    }
  zeros = jnp.zeros((num_new,), layer["bias"].dtype)
  if gain is not None:
    kernel = kernel.at[..., -num_new:].multiply(gain["scale"] * lax.rsqrt(gain["var"] + epsilon))
  return {"kernel": kernel, "bias": jnp.concatenate([layer["bias"], zeros])}


def reserve(layer, *, channels: int | None = None, gain=None, epsilon: float = 1e-5):
  """Reserving (Sec. 4.1): extends a dense conv with one Dirac output channel per input channel.

  The new outputs are the conv's input (sampled at its stride) — all of it, or its first
  `channels` channels — with zero bias in the deploy form or an identity BN (Eq. 3) in the
  fine-tuning form. A following ReLU keeps them unchanged when the input is non-negative, as
  every ResNet block input is; where it can be negative (MobileNetV2) the activation of these
  channels must be the identity (PReLU with slope 1). With `gain = {"scale": s, "var": v}` (per
  channel, s >= 0) the copies are `s x / sqrt(v + epsilon)` — still unchanged by the ReLU — and
  in the fine-tuning form their BN is exactly that (scale s, running variance v): how a BN on
  the shortcut (sparsity training, Sec. 4.2) gives the reserved channels an importance.

    >>> layer = {"kernel": k, "bias": b}          # k: (3, 3, C, M)
    >>> reserve(layer)["kernel"].shape            # (3, 3, C, M + C)
  """
  kernel = layer["kernel"]
  kh, _, in_features, _ = kernel.shape
  channels = in_features if channels is None else channels
  if not 0 < channels <= in_features:
    raise ValueError(f"cannot reserve {channels} of a conv's {in_features} input channels")
  dirac = dirac_kernel(in_features, kh, dtype=kernel.dtype)[..., :channels]
  return _append_outputs(
    layer, jnp.concatenate([kernel, dirac], axis=-1), channels, epsilon=epsilon, gain=gain
  )


def reserve_grouped(layer, groups: int, channels: int, *, dense: bool = False, epsilon=1e-5):
  """Carries `channels` reserved channels through a middle conv: returns `(layer, groups)`.

  The conv's input gains `channels` trailing channels (appended by `reserve` upstream) and its
  output gains the same channels, copied by Dirac kernels at the conv's stride.

  - Grouped form (default): the reserved channels become extra groups of the conv's own group
    size, each group a Dirac kernel — the original conv keeps its weights and groups, so the
    parameters added are `channels * group_size * k * k` instead of `(M + C)^2 k^2 - M^2 k^2`.
    This is the trick of the paper's RMNeXt (Sec. 5.4). It needs a conv with as many outputs
    as inputs per group and a group size that divides `channels`; otherwise the dense form is
    used.
  - Dense form (`dense=True`, as the published PyTorch code does): one block-diagonal dense conv.
  """
  kernel = layer["kernel"]
  kh, _, per_group, out_features = kernel.shape
  if not dense and channels % per_group == 0 and out_features == groups * per_group:
    extra_groups = channels // per_group
    dirac = dirac_kernel(channels, kh, groups=extra_groups, dtype=kernel.dtype)
    new_kernel = jnp.concatenate([kernel, dirac], axis=-1)
    return _append_outputs(layer, new_kernel, channels, epsilon=epsilon), groups + extra_groups
  original = grouped_to_dense(kernel, groups)
  in_features = original.shape[2]
  top = jnp.concatenate([original, jnp.zeros((kh, kh, in_features, channels), kernel.dtype)], -1)
  dirac = dirac_kernel(channels, kh, dtype=kernel.dtype)
  bottom = jnp.concatenate([jnp.zeros((kh, kh, channels, out_features), kernel.dtype), dirac], -1)
  new_kernel = jnp.concatenate([top, bottom], axis=2)
  return _append_outputs(layer, new_kernel, channels, epsilon=epsilon), 1


def merge(layer, shortcut_kernel, shortcut_bias, *, epsilon: float = 1e-5):
  """Merging (Eq. 4): extends the last conv with input columns that add the shortcut.

  `shortcut_kernel` is `(1, 1, C, out)` — the identity for an identity shortcut, the BN-folded
  projection for a downsample block — and is zero-padded to the conv's kernel size (Appendix
  A.1 method (b)). The conv's input gains `C` trailing channels that must carry the block input
  (as `reserve` arranges). In the deploy form the shortcut bias joins the conv bias.

  In the fine-tuning form the BN after the conv also sees the shortcut, so the columns are scaled
  to pass through it unchanged: with `sigma = sqrt(var + eps)` and a per-channel `r = scale / sigma`
  the BN computes `r * (conv - mean) + bias`; dividing the columns by `r` and adding the shortcut
  bias to the BN bias gives the block's output exactly. Where `scale == 0` the original branch is
  constant, so `r = 1 / sigma` is used instead and the original kernel columns are zeroed.
  """
  kernel = layer["kernel"]
  kh = kernel.shape[0]
  extra = pad_kernel(shortcut_kernel, kh).astype(kernel.dtype)
  if "bn" not in layer:
    return {
      "kernel": jnp.concatenate([kernel, extra], axis=2),
      "bias": layer["bias"] + shortcut_bias,
    }
  bn = layer["bn"]
  sigma = jnp.sqrt(bn["var"] + epsilon)
  nonzero = bn["scale"] != 0
  r = jnp.where(nonzero, bn["scale"] / sigma, 1 / sigma)
  a = jnp.where(nonzero, 1.0, bn["scale"] / sigma / r)  # (scale / sigma) / r, exactly 1 if nonzero
  new_bn = {
    "scale": jnp.where(nonzero, bn["scale"], 1.0),  # = r * sigma
    "bias": bn["bias"] + shortcut_bias,
    "mean": bn["mean"] * a,
    "var": bn["var"],
  }
  new_kernel = jnp.concatenate([kernel * a, extra / r], axis=2)
  return {"kernel": new_kernel, "bn": new_bn}
