"""RepVGG re-parameterisation (Eq. 1) and the converters of the RepVGG blocks (Sec. 4.3).

A RepVGG block is linear up to its ReLU: `BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x)`. Folding
each BN into its branch, zero-padding the 1x1 kernel to 3x3 and writing the identity as a Dirac
kernel (Eq. 2) gives three 3x3 kernels on the same input that simply add. Several BNs cannot be
kept as one, so these converters always give the deploy form (3x3 conv with bias + ReLU), even
with `keep_bn=True`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from rmjax.models.plain import ReLU
from rmjax.models.repvgg import RepBlock, ReservingRepBlock
from rmjax.transforms.batchnorm import fold_batchnorm
from rmjax.transforms.convert import (
  Emitted,
  Options,
  batchnorm_of,
  emit_conv,
  register_converter,
)
from rmjax.transforms.dirac import dirac_kernel, pad_kernel
from rmjax.transforms.resnet import EPS


def repvgg_reparam(
  kernel3x3,
  bn3x3,
  kernel1x1=None,
  bn1x1=None,
  bn_identity=None,
  *,
  groups: int = 1,
  identity_channels=None,
  epsilon: float = 1e-5,
):
  """One 3x3 conv `{"kernel", "bias"}` equal to a RepVGG block's branches before the ReLU (Eq. 1).

  Args:
    kernel3x3: `(3, 3, in // groups, out)`, the 3x3 branch; `bn3x3` its BN (`{"scale", "bias",
      "mean", "var"}`).
    kernel1x1: `(1, 1, in // groups, out)` and its `bn1x1`, or None (no 1x1 branch).
    bn_identity: the identity branch's BN over the `out` channels, or None (no identity).
    groups: the convs' groups; the identity becomes a grouped Dirac kernel of as many groups.
    identity_channels: the input channel each output's identity branch reads (static ints, each
      in its output's group); default `range(out)`, which needs `in == out`. A reserving block's
      computed channels read their own positions among all `in` channels.
    epsilon: the BNs' epsilon.

  The result, with padding 1 and the block's stride and groups, computes the block before its
  ReLU: the 1x1 kernel zero-padded to 3x3 samples what the 1x1 conv (padding 0) sampled, and the
  Dirac kernel's centre tap is the identity at any stride.

    >>> layer = repvgg_reparam(k3, bn3, k1, bn1, bn_id, groups=2)
    >>> layer["kernel"].shape == k3.shape
    True
  """
  kernel, bias = fold_batchnorm(kernel3x3, bn3x3, epsilon=epsilon)
  if kernel1x1 is not None:
    k1, b1 = fold_batchnorm(kernel1x1, bn1x1, epsilon=epsilon)
    kernel, bias = kernel + pad_kernel(k1, kernel.shape[0]), bias + b1
  if bn_identity is not None:
    identity = _identity_kernel(kernel.shape, groups, identity_channels, kernel.dtype)
    k_id, b_id = fold_batchnorm(identity, bn_identity, epsilon=epsilon)
    kernel, bias = kernel + k_id, bias + b_id
  return {"kernel": kernel, "bias": bias}


def _identity_kernel(shape, groups: int, identity_channels, dtype):
  """The Dirac kernel of `shape` (grouped) whose output j copies input `identity_channels[j]`."""
  kh, _, per_group, out_features = shape
  in_features = per_group * groups
  dirac = dirac_kernel(in_features, kh, groups=groups, dtype=dtype)
  if identity_channels is None:
    if in_features != out_features:
      raise ValueError(
        f"an identity branch needs as many inputs as outputs, got {in_features} -> "
        f"{out_features}; pass identity_channels"
      )
    return dirac
  channels = np.asarray(identity_channels)
  out_group = np.arange(out_features) // (out_features // groups)
  if channels.shape != (out_features,) or np.any(channels // per_group != out_group):
    raise ValueError(
      f"identity_channels must give each of the {out_features} outputs an input channel of its "
      f"own group ({groups} groups of {per_group} inputs)"
    )
  return dirac[..., channels]


def reserve_channels(layer, computed_channels, channels: int, *, groups: int = 1):
  """A grouped conv with `channels` outputs: `layer`'s outputs at positions `computed_channels`,
  every other output a copy of the input channel at its position (Dirac kernel, bias 0; Eq. 2).

  Reserving of Sec. 4.1 inside one conv: `layer` is `{"kernel", "bias"}` with
  `channels // groups` inputs per group, and `computed_channels` (static ints) keeps each output
  in its group, as a `ReservingRepBlock`'s computed channels are.

    >>> reserve_channels({"kernel": k, "bias": b}, [2, 3, 6, 7], 8, groups=2)["kernel"].shape
    (3, 3, 4, 8)
  """
  kernel = layer["kernel"]
  full = dirac_kernel(channels, kernel.shape[0], groups=groups, dtype=kernel.dtype)
  bias = jnp.zeros((channels,), layer["bias"].dtype)
  return {
    "kernel": full.at[..., computed_channels].set(kernel),
    "bias": bias.at[computed_channels].set(layer["bias"]),
  }


def reparam_block(variables, *, groups: int = 1, identity_channels=None, suffix: str = ""):
  """`repvgg_reparam` of a block's variables, named `conv3x3`, `bn3x3`, `conv1x1`, `bn1x1` and
  (where present) `bn_identity`, each followed by `suffix`."""
  params = variables["params"]
  identity = f"bn_identity{suffix}"
  return repvgg_reparam(
    params[f"conv3x3{suffix}"]["kernel"],
    batchnorm_of(variables, f"bn3x3{suffix}"),
    params[f"conv1x1{suffix}"]["kernel"],
    batchnorm_of(variables, f"bn1x1{suffix}"),
    batchnorm_of(variables, identity) if identity in params else None,
    groups=groups,
    identity_channels=identity_channels,
    epsilon=EPS,
  )


@register_converter(RepBlock)
def convert_rep_block(block: RepBlock, variables, options: Options) -> list[Emitted]:
  """One 3x3 conv + ReLU (deploy form only; see the module docstring)."""
  del options
  layer = reparam_block(variables, groups=block.groups)
  return emit_conv(layer, stride=block.strides, padding=1, groups=block.groups, epsilon=EPS) + [
    Emitted(ReLU())
  ]


@register_converter(ReservingRepBlock)
def convert_reserving_rep_block(
  block: ReservingRepBlock, variables, options: Options
) -> list[Emitted]:
  """Re-parameterise the computed channels, reserve the rest: one `features -> features` 3x3
  conv + ReLU, the shape of the RepBlock it replaces for every ratio (Fig. 5 (c))."""
  del options
  computed = block.computed_channels
  layer = reparam_block(variables, groups=block.groups, identity_channels=computed)
  layer = reserve_channels(layer, computed, block.features, groups=block.groups)
  return emit_conv(layer, stride=1, padding=1, groups=block.groups, epsilon=EPS) + [Emitted(ReLU())]
