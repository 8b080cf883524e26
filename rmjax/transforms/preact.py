"""Converters for pre-activation ResNets (He et al. 2016; `rmjax.models.preact`).

A pre-activation block computes `x + F(x)` with `F` starting with `relu(bn1(x))`: its input is
the previous block's raw sum, which can be negative, and it is needed twice — normalised and
ReLU'd for the branch, raw for the identity shortcut. So each block's plain layers begin with a
1x1 conv that emits both (the RMNet authors' `preactresnet2vgg.py` does the same):

  1x1 conv (C -> 2C): [bn1(x), x]   kernel [I | I] + BN [bn1 | Eq. 3 identity] (fine-tuning form),
                                    or [diag(bn1 scale) | I] with bias (deploy form)
  PReLU: slope 0 on the first C (ReLU), 1 on the reserved C (identity): Sec. 4.1's second case,
         reserved channels that can be negative, as in MobileNetV2 (Sec. 4.4)
  conv1 (+C carried: Dirac groups or block-diagonal) -> BN -> PReLU -> ... (each BN-ReLU of the
         branch is the BN after a conv, folded or kept, and a PReLU that spares the copies)
  last conv (+C input columns adding the copies, Eq. 4) -> the block's raw sum.

A block with a projection shortcut reads `relu(bn1(x))` on both paths, so nothing raw is
needed: its 1x1 conv is `bn1` alone (C -> C), the reserved copies are non-negative (plain ReLUs
keep them, Sec. 4.1's first case), and the last conv merges the projection (Appendix A.1 (b)),
exactly as for a post-activation ResNet block. The final BN-ReLU is such a 1x1 conv and a ReLU.

In a bottleneck network the last conv (1x1) and the next block's 1x1 conv have no activation
between them, and `rm_convert` fuses them (Eq. 5). After a basic block's 3x3 merging conv they
stay two layers: fused, the 3x3 conv would compute every output twice (9 (M + C) 2C
multiply-adds per pixel instead of 9 (M + C) C + 2C^2).
"""

from __future__ import annotations

import jax.numpy as jnp

from rmjax.models.layers import BN_EPSILON
from rmjax.models.plain import MaxPool
from rmjax.models.preact import (
  PreActBasicBlock,
  PreActBlock,
  PreActBottleneck,
  PreActNorm,
  PreActStem,
)
from rmjax.transforms.batchnorm import fold_batchnorm
from rmjax.transforms.convert import (
  Emitted,
  Options,
  batchnorm_of,
  conv_layer,
  emit_conv,
  register_converter,
)
from rmjax.transforms.mobilenet import activation
from rmjax.transforms.rm import merge, reserve, reserve_grouped

EPS = BN_EPSILON


def preactivation(variables, bn: str, features: int, options: Options, *, copy: bool):
  """The BN `bn` of a block's input as a 1x1 conv layer dict (see `transforms.rm`); with `copy`,
  followed by `features` reserved outputs that copy the input raw (Sec. 4.1, Eq. 2-3)."""
  stats = batchnorm_of(variables, bn)
  kernel = jnp.eye(features, dtype=stats["mean"].dtype)[None, None]
  if options.keep_bn:
    layer = {"kernel": kernel, "bn": stats}
  else:
    layer = dict(zip(("kernel", "bias"), fold_batchnorm(kernel, stats, epsilon=EPS), strict=True))
  return reserve(layer, epsilon=EPS) if copy else layer


@register_converter(PreActStem)
def convert_preact_stem(stem: PreActStem, variables, options: Options) -> list[Emitted]:
  del options  # no BN to fold or keep
  kernel = variables["params"]["conv"]["kernel"]
  layer = {"kernel": kernel, "bias": jnp.zeros((kernel.shape[-1],), kernel.dtype)}
  if stem.kind == "cifar":
    return emit_conv(layer, stride=1, padding=1)
  return emit_conv(layer, stride=2, padding=3) + [Emitted(MaxPool(window=3, stride=2, padding=1))]


def convert_preact_block(block: PreActBlock, variables, options: Options) -> list[Emitted]:
  """BN-split 1x1 conv, then the branch's convs carrying C copies, the last merging them."""
  c = block.in_features
  identity = not block.has_projection
  raw = c if identity else 0  # reserved channels that can be negative (PReLU slope 1)
  layer = preactivation(variables, "bn1", c, options, copy=identity)
  layers = emit_conv(layer, stride=1, padding=0, epsilon=EPS, reserved=raw)
  layers.append(activation("relu", c + raw, raw))
  convs = block.convs()
  for i, (width, size, stride) in enumerate(convs[:-1]):
    layer = conv_layer(variables, f"conv{i + 1}", f"bn{i + 2}", options, epsilon=EPS)
    groups, record = 1, {"reserved": c}
    if i == 0 and not identity:
      layer = reserve(layer, epsilon=EPS)  # copies relu(bn1(x)) >= 0
    else:
      layer, groups = reserve_grouped(layer, 1, c, dense=options.dense_reserve, epsilon=EPS)
      record["carried"] = True
    layers += emit_conv(
      layer, stride=stride, padding=size // 2, groups=groups, epsilon=EPS, **record
    )
    layers.append(activation("relu", width + c, raw))
  kernel = variables["params"][f"conv{len(convs)}"]["kernel"]
  zeros = jnp.zeros((block.out_features,), kernel.dtype)
  if identity:
    shortcut = jnp.eye(c, dtype=kernel.dtype)[None, None]
  else:
    shortcut = variables["params"]["proj_conv"]["kernel"]
  last = merge({"kernel": kernel, "bias": zeros}, shortcut, zeros, epsilon=EPS)
  _, size, stride = convs[-1]
  return layers + emit_conv(
    last, stride=stride, padding=size // 2, merged=c, merged_identity=identity
  )


@register_converter(PreActBasicBlock)
def convert_preact_basic_block(block, variables, options: Options) -> list[Emitted]:
  return convert_preact_block(block, variables, options)


@register_converter(PreActBottleneck)
def convert_preact_bottleneck(block, variables, options: Options) -> list[Emitted]:
  return convert_preact_block(block, variables, options)


@register_converter(PreActNorm)
def convert_preact_norm(norm: PreActNorm, variables, options: Options) -> list[Emitted]:
  layer = preactivation(variables, "bn", norm.features, options, copy=False)
  return emit_conv(layer, stride=1, padding=0, epsilon=EPS) + [activation("relu", norm.features)]
