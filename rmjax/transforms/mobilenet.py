"""Converters for MobileNetV1 and MobileNetV2 (Sec. 4.4, Fig. 6).

MobileNetV2's shortcut carries a linear bottleneck, whose values can be negative, so the reserved
channels cannot rely on ReLU leaving them alone (Sec. 4.1, second case): their activation is a
PReLU with slope 1 — and for ReLU6 networks it must not clip them either, so the plain network's
activation there is a `PReLU` whose first channels are the ReLU6 ones (slope 0, clipped at 6)
and whose reserved channels pass through (slope 1, unclipped).

After RM, the projecting 1x1 conv of each block meets the next block's expanding 1x1 conv with no
activation between them; `rm_convert` fuses such pairs (Eq. 5), which is what makes the
paper's re-designed MobileNetV2 come out as MobileNetV1.

Every block carries its BN epsilon and padding convention (`bn_epsilon`, `padding`: imported
Keras networks use 1e-3 and TensorFlow's "SAME"); the plain layers copy both, a stride-2 conv's
"SAME" as `padding="same"` (computed from its input's size, so one plain network serves every
size the Keras model does). Only stride-1 depthwise convs carry reserved channels, and those are
padded (1, 1) at every size either way, so their Dirac kernels' centre taps read the pixel the
shortcut carries; a stride-2 "same" conv could not (it reads 2i + 1 on even sizes, 2i on odd
ones), and `emit_conv` refuses Dirac structure there.
"""

from __future__ import annotations

import jax.numpy as jnp

from rmjax.models.mobilenet import ConvBN, DepthwiseSeparable, InvertedResidual, conv_padding
from rmjax.models.plain import PReLU, ReLU, SqueezeExcite
from rmjax.transforms.convert import (
  Emitted,
  Options,
  conv_layer,
  emit_conv,
  register_converter,
)
from rmjax.transforms.rm import merge, reserve, reserve_grouped

_MAX_VALUE = {"relu": None, "relu6": 6.0}


def activation(name: str, features: int, passthrough: int = 0, dtype=jnp.float32) -> Emitted:
  """The plain activation for `features` channels whose last `passthrough` are reserved ones."""
  max_value = _MAX_VALUE[name]
  if not passthrough:
    return Emitted(ReLU(max_value))
  active = features - passthrough
  # slope 0 = ReLU on the block's own channels, slope 1 = identity on the reserved ones.
  slope = jnp.concatenate([jnp.zeros((active,), dtype), jnp.ones((passthrough,), dtype)])
  clipped = active if max_value is not None else 0
  return Emitted(PReLU(features, max_value, clipped), {"slope": slope})


@register_converter(ConvBN)
def convert_conv_bn(block: ConvBN, variables, options: Options) -> list[Emitted]:
  eps = block.bn_epsilon
  layer = conv_layer(variables, "conv", "bn", options, epsilon=eps)
  pad = conv_padding(block.kernel_size, block.strides, block.padding)
  return emit_conv(layer, stride=block.strides, padding=pad, epsilon=eps) + [
    activation(block.activation, block.features)
  ]


@register_converter(DepthwiseSeparable)
def convert_depthwise_separable(
  block: DepthwiseSeparable, variables, options: Options
) -> list[Emitted]:
  eps = block.bn_epsilon
  dw = conv_layer(variables, "depthwise", "depthwise_bn", options, epsilon=eps)
  pw = conv_layer(variables, "pointwise", "pointwise_bn", options, epsilon=eps)
  act = activation(block.activation, block.features)
  pad = conv_padding(3, block.strides, block.padding)
  return (
    emit_conv(dw, stride=block.strides, padding=pad, groups=block.in_features, epsilon=eps)
    + [activation(block.activation, block.in_features)]
    + emit_conv(pw, stride=1, padding=0, epsilon=eps)
    + [act]
  )


@register_converter(InvertedResidual)
def convert_inverted_residual(
  block: InvertedResidual, variables, options: Options
) -> list[Emitted]:
  """expand (+ S Dirac outputs) -> PReLU -> depthwise (+ S Dirac groups) -> PReLU [-> SE on
  the depthwise channels] -> project (+ S identity input columns, Eq. 4), where S =
  `block.shortcut` channels are carried. The SE sits inside the branch, before a linear conv,
  so the plain `SqueezeExcite` layer alone keeps it exact: no extra merging conv is needed."""
  s = block.shortcut
  dw_width = block.depthwise_features
  eps = block.bn_epsilon
  layers: list[Emitted] = []
  if block.hidden_features:
    expand = conv_layer(variables, "expand", "expand_bn", options, epsilon=eps)
    if s:
      expand = reserve(expand, channels=s, epsilon=eps)
    layers += emit_conv(expand, stride=1, padding=0, epsilon=eps, reserved=s)
    layers.append(activation(block.activation, dw_width + s, s))
  elif s:
    raise ValueError(
      f"block {block.name!r} has a shortcut but no expanding 1x1 conv to reserve it in; "
      "RM needs a conv before the depthwise one"
    )
  dw = conv_layer(variables, "depthwise", "depthwise_bn", options, epsilon=eps)
  groups = dw_width
  if s:
    dw, groups = reserve_grouped(dw, groups=dw_width, channels=s, epsilon=eps)
  pad = conv_padding(3, block.strides, block.padding)
  layers += emit_conv(
    dw, stride=block.strides, padding=pad, groups=groups, epsilon=eps, reserved=s, carried=s > 0
  )
  layers.append(activation(block.activation, dw_width + s, s))
  if block.se_features:
    # The gate reads and scales the block's own channels; the carried ones pass untouched.
    se = SqueezeExcite(dw_width + s, block.se_features, dw_width)
    layers.append(Emitted(se, dict(variables["params"]["se"])))
  project = conv_layer(variables, "project", "project_bn", options, epsilon=eps)
  if s:
    dtype = project["kernel"].dtype
    # The shortcut adds input channel c to output channel c, for c < s.
    eye = jnp.eye(s, block.features, dtype=dtype)[None, None]
    project = merge(project, eye, jnp.zeros((block.features,), dtype), epsilon=eps)
  return layers + emit_conv(
    project, stride=1, padding=0, epsilon=eps, merged=s, merged_identity=s > 0
  )
