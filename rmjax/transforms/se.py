"""Converters for SE-ResNet blocks (Hu et al. 2018; `rmjax.models.se`): exact RM across SE.

The SE gate multiplies the residual branch *before* the sum, so the shortcut cannot be merged
into the branch's last conv as in a ResNet block (Eq. 4): the gate would scale it too. Instead
the input is reserved through every conv of the branch (Sec. 4.1: Dirac outputs in the first
conv, Dirac groups or block-diagonal copies in the others; the block input is non-negative, so
the ReLUs keep it), the plain `SqueezeExcite` layer gates the branch's channels and passes the
reserved ones through untouched, and a 1x1 conv adds them: the identity on the branch plus the
shortcut's columns (Eq. 4 with a 1x1 identity as the merged conv: the identity matrix for an
identity shortcut, the BN-folded projection for a downsample block, A.1 (b)). Per block:

  conv1 (+C reserved) -> ReLU -> [conv2 (+C carried) -> ReLU ->] last conv (+C carried)
    -> SqueezeExcite(first `out` channels) -> 1x1 merge (out + C -> out) -> ReLU

Why exact, where the RMNet authors' SE conversion (`models/rmrepse.py`, SE on a RepVGG block
after the sum) is not: their reserved channels are gated by `sigmoid(100)`, which is exactly 1
in float32, but the BN they put on the reserved channels is left at its initial state
(scale 1, variance 1), so each reserving block scales them by `1 / sqrt(1 + eps)` instead of
applying Eq. 3. Here the reserved channels are not gated at all (the plain layer concatenates
them back as they came), and their BN in the fine-tuning form is Eq. 3's identity.
"""

from __future__ import annotations

import jax.numpy as jnp

from rmjax.models.layers import BN_EPSILON
from rmjax.models.plain import ReLU, SqueezeExcite
from rmjax.models.se import SEBasicBlock, SEBottleneck
from rmjax.transforms.convert import Emitted, Options, conv_layer, emit_conv, register_converter
from rmjax.transforms.resnet import shortcut_weights
from rmjax.transforms.rm import merge, reserve, reserve_grouped

EPS = BN_EPSILON


def convert_se_block(block, variables, options: Options, convs) -> list[Emitted]:
  """An SE block whose branch is `convs`: `(conv, its BN, kernel size, stride)` in order."""
  c, out = block.in_features, block.out_features
  kernel, bias, gain = shortcut_weights(block, variables)
  layers: list[Emitted] = []
  for i, (conv, bn, size, stride) in enumerate(convs):
    layer = conv_layer(variables, conv, bn, options, epsilon=EPS)
    groups, record = 1, {"reserved": c}
    if i == 0:
      layer = reserve(layer, gain=gain, epsilon=EPS)
    else:
      layer, groups = reserve_grouped(layer, 1, c, dense=options.dense_reserve, epsilon=EPS)
      record["carried"] = True
    layers += emit_conv(
      layer, stride=stride, padding=size // 2, groups=groups, epsilon=EPS, **record
    )
    if i < len(convs) - 1:
      layers.append(Emitted(ReLU()))
  layers.append(
    Emitted(SqueezeExcite(out + c, block.se_features, out), dict(variables["params"]["se"]))
  )
  dtype = kernel.dtype
  branch = {"kernel": jnp.eye(out, dtype=dtype)[None, None], "bias": jnp.zeros((out,), dtype)}
  add = merge(branch, kernel, bias, epsilon=EPS)
  identity = not block.has_projection
  layers += emit_conv(add, stride=1, padding=0, merged=c, merged_identity=identity)
  return layers + [Emitted(ReLU())]


@register_converter(SEBasicBlock)
def convert_se_basic_block(block: SEBasicBlock, variables, options: Options) -> list[Emitted]:
  convs = (("conv1", "bn1", 3, block.strides), ("conv2", "bn2", 3, 1))
  return convert_se_block(block, variables, options, convs)


@register_converter(SEBottleneck)
def convert_se_bottleneck(block: SEBottleneck, variables, options: Options) -> list[Emitted]:
  convs = (("conv1", "bn1", 1, 1), ("conv2", "bn2", 3, block.strides), ("conv3", "bn3", 1, 1))
  return convert_se_block(block, variables, options, convs)
