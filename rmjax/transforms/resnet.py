"""Converters for the ResNet family: stem, basic block, bottleneck, head.

Every block input is non-negative (the stem and every block end in ReLU, max-pool keeps the
sign), so the reserved channels pass the in-block ReLUs unchanged (Sec. 4.1, first case).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rmjax.models.layers import BN_EPSILON, Head, Stem
from rmjax.models.plain import Dense, GlobalAvgPool, MaxPool, ReLU
from rmjax.models.resnet import BasicBlock, Bottleneck, ResidualBlock
from rmjax.transforms.convert import (
  Emitted,
  Options,
  batchnorm_of,
  conv_layer,
  emit_conv,
  folded_conv,
  register_converter,
)
from rmjax.transforms.rm import merge, reserve, reserve_grouped

EPS = BN_EPSILON


def shortcut_weights(block: ResidualBlock, variables):
  """The shortcut as a 1x1 conv `(kernel, bias)` plus the gain the reserved copies carry.

  Identity: `(I, 0)`, gain None. Projection: the BN-folded 1x1 conv, gain None. Identity through
  a BN (`shortcut_bn`, per channel `m * x + b` with `m = scale / sigma`): the reserved copies
  carry `|m| x` — non-negative, so the ReLUs keep them — and the merge adds them with sign(m),
  plus `b`. The gain is `{"scale": |scale|, "var": var}` of that BN (`reserve`): in the
  fine-tuning form the reserved channels' BN is `|scale| x / sigma`, so their BN scale is the
  one sparsity training drove towards 0 — the importance network slimming prunes by (Sec. 4.2).
  """
  if block.has_projection:
    return (*folded_conv(variables, "proj_conv", "proj_bn", epsilon=EPS), None)
  dtype = variables["params"]["conv1"]["kernel"].dtype
  if not block.shortcut_bn:
    eye = jnp.eye(block.in_features, dtype=dtype)[None, None]
    return eye, jnp.zeros((block.in_features,), dtype), None
  bn = batchnorm_of(variables, "shortcut_bn")
  m = bn["scale"] * jax.lax.rsqrt(bn["var"] + EPS)
  signs = jnp.diag(jnp.where(m < 0, -1.0, 1.0).astype(dtype))[None, None]
  return signs, bn["bias"] - bn["mean"] * m, {"scale": jnp.abs(bn["scale"]), "var": bn["var"]}


@register_converter(Stem)
def convert_stem(stem: Stem, variables, options: Options) -> list[Emitted]:
  layer = conv_layer(variables, "conv", "bn", options, epsilon=EPS)
  if stem.kind == "cifar":
    return emit_conv(layer, stride=1, padding=1, epsilon=EPS) + [Emitted(ReLU())]
  return emit_conv(layer, stride=2, padding=3, epsilon=EPS) + [
    Emitted(ReLU()),
    Emitted(MaxPool(window=3, stride=2, padding=1)),
  ]


@register_converter(BasicBlock)
def convert_basic_block(block: BasicBlock, variables, options: Options) -> list[Emitted]:
  """conv1 (C -> M + C, Dirac at the block's stride) -> conv2 (M + C -> out), Eq. 2-4.

  For a downsample block this is Appendix A.1 method (b): the reserved path is a stride-2 Dirac
  3x3 conv and the 1x1 projection, zero-padded to 3x3, becomes conv2's extra input columns —
  9C(2C + C) + 9(3C)(2C) = 81C^2 weights.
  """
  kernel, bias, gain = shortcut_weights(block, variables)
  conv1 = conv_layer(variables, "conv1", "bn1", options, epsilon=EPS)
  conv1 = reserve(conv1, gain=gain, epsilon=EPS)
  conv2 = merge(
    conv_layer(variables, "conv2", "bn2", options, epsilon=EPS), kernel, bias, epsilon=EPS
  )
  # Recorded for structured execution: conv1's last C outputs copy its input, conv2's last C
  # inputs enter through the centre tap only (rmjax.models.structured).
  identity = not block.has_projection
  c = block.in_features
  return (
    emit_conv(conv1, stride=block.strides, padding=1, epsilon=EPS, reserved=c)
    + [Emitted(ReLU())]
    + emit_conv(conv2, stride=1, padding=1, epsilon=EPS, merged=c, merged_identity=identity)
    + [Emitted(ReLU())]
  )


def convert_three_conv_block(block, variables, options: Options, *, groups: int = 1):
  """1x1 -> 3x3 (stride, `groups`) -> 1x1 with a shortcut: reserve through all three convs.

  The 3x3 carries the reserved channels as Dirac groups of its own group size (or densely with
  `options.dense_reserve`) and the block's stride; a projection's folded 1x1 weights become the
  last conv's extra input columns. Serves ResNet's Bottleneck and RMNeXt's block.
  """
  kernel, bias, gain = shortcut_weights(block, variables)
  conv1 = conv_layer(variables, "conv1", "bn1", options, epsilon=EPS)
  conv1 = reserve(conv1, gain=gain, epsilon=EPS)
  conv2, new_groups = reserve_grouped(
    conv_layer(variables, "conv2", "bn2", options, epsilon=EPS),
    groups=groups,
    channels=block.in_features,
    dense=options.dense_reserve,
    epsilon=EPS,
  )
  conv3 = merge(
    conv_layer(variables, "conv3", "bn3", options, epsilon=EPS), kernel, bias, epsilon=EPS
  )
  # Recorded for structured execution (rmjax.models.structured): conv1 reserves C channels,
  # conv2 carries them, conv3 merges them.
  identity = not block.has_projection
  c = block.in_features
  return (
    emit_conv(conv1, stride=1, padding=0, epsilon=EPS, reserved=c)
    + [Emitted(ReLU())]
    + emit_conv(
      conv2,
      stride=block.strides,
      padding=1,
      groups=new_groups,
      epsilon=EPS,
      reserved=c,
      carried=True,
    )
    + [Emitted(ReLU())]
    + emit_conv(conv3, stride=1, padding=0, epsilon=EPS, merged=c, merged_identity=identity)
    + [Emitted(ReLU())]
  )


@register_converter(Bottleneck)
def convert_bottleneck(block: Bottleneck, variables, options: Options) -> list[Emitted]:
  return convert_three_conv_block(block, variables, options)


@register_converter(Head)
def convert_head(head: Head, variables, options: Options) -> list[Emitted]:
  del options
  fc = variables["params"]["fc"]
  in_features, out_features = fc["kernel"].shape
  return [Emitted(GlobalAvgPool()), Emitted(Dense(in_features, out_features), dict(fc))]
