"""RMNeXt: the paper's RMNet family (Sec. 5.4, Table 3, Table 4), designed to be converted.

Inverted-residual blocks with a grouped 3x3 conv: 1x1 (in -> mid) + BN + ReLU, grouped 3x3
(mid -> mid, stride s, `cpg` channels per group) + BN + ReLU, 1x1 (mid -> out) + BN, shortcut,
ReLU after the sum. With expansion `T`, `mid = out * (T - 1)`: after RM the reserved input
channels become extra Dirac groups, so the deployed grouped conv is `T x out` wide (for an
identity block) — the paper's "x T" width. The stem is RepVGG-style (3x3 ConvBN + 1x1 ConvBN,
ReLU after the sum): one stride-1 block for CIFAR, two stride-2 blocks for ImageNet.

Presets are named `rmnext{depth}x{T}_{cpg}` as in the paper's Table 3:

  >>> model = models.create("rmnext26x3_32", num_classes=10, stem="cifar")
"""

from __future__ import annotations

import functools

import flax.linen as nn

from rmjax.models.layers import StagedNetwork, StemBase, batch_norm, conv
from rmjax.models.resnet import ResidualBlock, shortcut


class RepVGGStem(StemBase):
  """RepVGG blocks without identity: relu(BN(conv3x3(x)) + BN(conv1x1(x))), one per stride."""

  @property
  def strides(self) -> tuple[int, ...]:
    return (1,) if self.kind == "cifar" else (2, 2)

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, stride in enumerate(self.strides):
      a = batch_norm(train, f"bn3x3_{i}")(conv(self.features, 3, stride, name=f"conv3x3_{i}")(x))
      b = batch_norm(train, f"bn1x1_{i}")(conv(self.features, 1, stride, name=f"conv1x1_{i}")(x))
      x = nn.relu(a + b)
    return x


class RMNeXtBlock(ResidualBlock):
  """`features` is the block's output width; the middle is `features * (expansion - 1)` wide
  with groups of `channels_per_group` channels."""

  expansion: int = 3
  channels_per_group: int = 32
  num_inner = 0  # its inner widths follow from expansion and groups

  @property
  def out_features(self) -> int:
    return self.features

  @property
  def mid_features(self) -> int:
    return self.features * (self.expansion - 1)

  @property
  def groups(self) -> int:
    return self.mid_features // self.channels_per_group

  def __post_init__(self):
    if self.mid_features % self.channels_per_group:
      raise ValueError(
        f"the middle width {self.mid_features} is not a multiple of channels_per_group "
        f"{self.channels_per_group}"
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = conv(self.mid_features, 1, 1, name="conv1")(x)
    y = nn.relu(batch_norm(train, "bn1")(y))
    y = conv(self.mid_features, 3, self.strides, name="conv2", groups=self.groups)(y)
    y = nn.relu(batch_norm(train, "bn2")(y))
    y = conv(self.out_features, 1, 1, name="conv3")(y)
    y = batch_norm(train, "bn3")(y)
    return nn.relu(y + shortcut(self, x, train))


class RMNeXt(StagedNetwork):
  """Stages of RMNeXt blocks; stage i has width `widths[i]` and `cpg * 2**i` channels/group."""

  expansion: int = 3
  channels_per_group: int = 32

  def stem_module(self):
    return RepVGGStem(self.stem_width, self.stem, parent=None, name="stem")

  def block_module(self, stage, in_features, width, stride, name, index):
    del index  # every block of a stage has the same shape
    return RMNeXtBlock(
      in_features,
      width,
      stride,
      expansion=self.expansion,
      channels_per_group=self.channels_per_group * 2**stage,
      shortcut_bn=self.shortcut_bn,
      parent=None,
      name=name,
    )


def _preset(stage_sizes, expansion, cpg, stem="imagenet"):
  return functools.partial(
    RMNeXt, stage_sizes=stage_sizes, expansion=expansion, channels_per_group=cpg, stem=stem
  )


# Table 3: RMNet 26 [2,2,2,2]; 41 [2,3,5,3]; 50 [3,4,6,3]; 101 [3,4,23,3]; 152 [3,8,36,3].
PRESETS = {
  "rmnext26x3_32": _preset((2, 2, 2, 2), 3, 32, stem="cifar"),
  "rmnext41x4_8": _preset((2, 3, 5, 3), 4, 8),
  "rmnext41x5_16": _preset((2, 3, 5, 3), 5, 16),
  "rmnext50x5_32": _preset((3, 4, 6, 3), 5, 32),
  "rmnext50x6_32": _preset((3, 4, 6, 3), 6, 32),
  "rmnext101x6_16": _preset((3, 4, 23, 3), 6, 16),
  "rmnext152x6_32": _preset((3, 8, 36, 3), 6, 32),
}
