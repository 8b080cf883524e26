"""Converters for RMNeXt (Sec. 5.4): the RepVGG-style stem and the grouped inverted block."""

from __future__ import annotations

from rmjax.models.plain import ReLU
from rmjax.models.rmnext import RepVGGStem, RMNeXtBlock
from rmjax.transforms.convert import Emitted, Options, emit_conv, register_converter
from rmjax.transforms.repvgg import reparam_block
from rmjax.transforms.resnet import EPS, convert_three_conv_block


@register_converter(RepVGGStem)
def convert_repvgg_stem(stem: RepVGGStem, variables, options: Options) -> list[Emitted]:
  """Each 3x3 ConvBN + 1x1 ConvBN pair re-parameterises into one 3x3 conv (RepVGG, Eq. 1).

  Both branches are linear before the ReLU, so their BN-folded kernels add (the 1x1 kernel
  zero-padded to 3x3): `repvgg_reparam`, as for RepVGG's blocks. Two BNs cannot be kept as one,
  so the stem is in deploy form (conv with bias) even when `options.keep_bn` is set.
  """
  del options
  layers = []
  for i, stride in enumerate(stem.strides):
    merged = reparam_block(variables, suffix=f"_{i}")
    layers += emit_conv(merged, stride=stride, padding=1, epsilon=EPS) + [Emitted(ReLU())]
  return layers


@register_converter(RMNeXtBlock)
def convert_rmnext_block(block: RMNeXtBlock, variables, options: Options) -> list[Emitted]:
  """Reserve through conv1 and the grouped conv (Dirac groups of `cpg` channels), merge in conv3;
  an identity block's deployed grouped conv is `expansion x out` wide (Table 4)."""
  return convert_three_conv_block(block, variables, options, groups=block.groups)
