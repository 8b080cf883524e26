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
from collections.abc import Sequence

import flax.linen as nn

from rmjax.models.resnet import STEMS, Head, ResidualBlock, batch_norm, conv, conv_init


class RepVGGStem(nn.Module):
  """RepVGG blocks without identity: relu(BN(conv3x3(x)) + BN(conv1x1(x))), one per stride."""

  features: int = 64
  kind: str = "cifar"

  def __post_init__(self):
    if self.kind not in STEMS:
      raise ValueError(f"unknown stem {self.kind!r}; expected one of {STEMS}")
    super().__post_init__()

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
    pad = ((1, 1), (1, 1))
    y = nn.Conv(
      self.mid_features,
      (3, 3),
      strides=(self.strides, self.strides),
      padding=pad,
      feature_group_count=self.groups,
      use_bias=False,
      kernel_init=conv_init,
      name="conv2",
    )(y)
    y = nn.relu(batch_norm(train, "bn2")(y))
    y = conv(self.out_features, 1, 1, name="conv3")(y)
    y = batch_norm(train, "bn3")(y)
    if self.has_projection:
      x = conv(self.out_features, 1, self.strides, name="proj_conv")(x)
      x = batch_norm(train, "proj_bn")(x)
    return nn.relu(y + x)


class RMNeXt(nn.Module):
  """Stages of RMNeXt blocks; stage i has width `widths[i]` and `cpg * 2**i` channels/group."""

  stage_sizes: Sequence[int]
  expansion: int = 3
  channels_per_group: int = 32
  num_classes: int = 1000
  stem: str = "imagenet"
  widths: Sequence[int] = (64, 128, 256, 512)
  strides: Sequence[int] = (1, 2, 2, 2)
  stem_width: int = 64

  def layout(self) -> tuple[nn.Module, ...]:
    if not len(self.stage_sizes) == len(self.widths) == len(self.strides):
      raise ValueError(
        f"stage_sizes {tuple(self.stage_sizes)}, widths {tuple(self.widths)} and strides "
        f"{tuple(self.strides)} must have the same length"
      )
    parts: list[nn.Module] = [RepVGGStem(self.stem_width, self.stem, parent=None, name="stem")]
    in_features = self.stem_width
    for i, (size, width, stride) in enumerate(
      zip(self.stage_sizes, self.widths, self.strides, strict=True)
    ):
      for j in range(size):
        block = RMNeXtBlock(
          in_features,
          width,
          stride if j == 0 else 1,
          expansion=self.expansion,
          channels_per_group=self.channels_per_group * 2**i,
          parent=None,
          name=f"layer{i + 1}_{j}",
        )
        parts.append(block)
        in_features = width
    parts.append(Head(self.num_classes, parent=None, name="head"))
    return tuple(parts)

  @nn.compact
  def __call__(self, x, train: bool = False):
    for part in self.layout():
      x = part.clone(parent=self, name=part.name)(x, train=train)
    return x


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
