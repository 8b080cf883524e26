"""RepVGG (Ding et al. 2021) and the RM operation's deeper RepVGG (Sec. 4.3, Fig. 5, Sec. 5.2).

A RepBlock is `relu(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x))` (Eq. 1), the identity branch
only where the shape allows. All three branches are linear before the ReLU, so each block
re-parameterises into one 3x3 conv (`rmjax.transforms.repvgg_reparam`): the deployed network
is a VGG-like stack of 3x3 conv + ReLU.

RepVGG degrades when it gets deep (Sec. 3, Fig. 2): every ReLU sits on the only path. The RM
operation lets a residual connection cross a non-linearity: a `ReservingRepBlock` passes a
fraction `reserve_ratio` of its input channels through unchanged (the ReLU keeps them, block
inputs being post-ReLU), and the RepBlock after it adds them back with its identity branch.
After conversion both are plain 3x3 convs of the same shape as RepVGG's (Fig. 5 (c)).

  >>> model = models.create("repvgg_a0", num_classes=10, stem="cifar")
  >>> deeper = models.create("repvgg69", num_classes=100, stem="cifar", reserve_ratio=0.5)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from rmjax.models.layers import BlockNetwork, Head, batch_norm, check_stem, conv

# RepVGG's `optional_groupwise_layers`: the layers (stem = 0) whose 3x3 and 1x1 convs are grouped
# in the g2 / g4 variants.
GROUPED_LAYERS = tuple(range(2, 27, 2))


def _check_groups(name, groups: int, **widths: int) -> None:
  for what, width in widths.items():
    if width % groups:
      raise ValueError(f"{name}: {what} ({width}) must be divisible by groups ({groups})")


class RepBlock(nn.Module):
  """relu(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x)), Eq. 1; both convs have `groups` groups.

  The identity branch (`bn_identity`) exists only where it can: stride 1 and `in == out`.

    >>> RepBlock(64, 128, strides=2, groups=2).has_identity
    False
  """

  in_features: int
  features: int
  strides: int = 1
  groups: int = 1

  def __post_init__(self):
    _check_groups(self.name, self.groups, in_features=self.in_features, features=self.features)
    super().__post_init__()

  @property
  def out_features(self) -> int:
    return self.features

  @property
  def has_identity(self) -> bool:
    return self.strides == 1 and self.in_features == self.features

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = conv_branches(self.features, self.strides, self.groups, x, train)
    if self.has_identity:
      y = y + batch_norm(train, "bn_identity")(x)
    return nn.relu(y)


def conv_branches(features: int, strides: int, groups: int, x, train: bool):
  """BN(conv3x3(x)) + BN(conv1x1(x)), the two conv branches every RepVGG block has."""
  a = batch_norm(train, "bn3x3")(conv(features, 3, strides, name="conv3x3", groups=groups)(x))
  b = batch_norm(train, "bn1x1")(conv(features, 1, strides, name="conv1x1", groups=groups)(x))
  return a + b


class ReservingRepBlock(nn.Module):
  """A RepBlock that reserves part of its input (Sec. 4.3, Fig. 5 (b)); `features` in and out.

  Each of the `groups` groups reserves its first `r = floor(features / groups * reserve_ratio)`
  channels: they leave the block as they came in (the ReLU keeps them, block inputs are
  non-negative). The other channels — still contiguous per group, so one grouped conv computes
  them — are a RepBlock's output: `BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x[computed])`, the
  convs reading all of `x`. The RepBlock after this one merges the reserved channels through
  its identity branch: a residual connection across this block's ReLU.

  With `r == 0` (ratio 0) it is a RepBlock, with the same variables.

    >>> ReservingRepBlock(64, 0.25, groups=2).reserved_per_group     # of 32 per group
    8
  """

  features: int
  reserve_ratio: float
  groups: int = 1

  def __post_init__(self):
    check_reserve_ratio(self.reserve_ratio)
    _check_groups(self.name, self.groups, features=self.features)
    if self.reserve_ratio > 0 and self.reserved_per_group == 0:
      per_group = self.features // self.groups
      raise ValueError(
        f"{self.name}: reserve_ratio {self.reserve_ratio} reserves no channel of a group of "
        f"{per_group}; use at least 1/{per_group}, or 0 for RepVGG"
      )
    super().__post_init__()

  @property
  def in_features(self) -> int:
    return self.features

  @property
  def out_features(self) -> int:
    return self.features

  @property
  def reserved_per_group(self) -> int:
    # The tolerance keeps float round-off from costing a channel (0.29 * 100 = 28.999...).
    return math.floor(self.features // self.groups * self.reserve_ratio + 1e-9)

  @property
  def computed_channels(self) -> np.ndarray:
    """Indices of the computed (non-reserved) channels, group by group: static, NumPy."""
    per_group = self.features // self.groups
    channels = np.arange(self.features).reshape(self.groups, per_group)
    return channels[:, self.reserved_per_group :].reshape(-1)

  @nn.compact
  def __call__(self, x, train: bool = False):
    r = self.reserved_per_group
    batch_shape, computed_width = x.shape[:-1], self.features - self.groups * r
    by_group = x.reshape(*batch_shape, self.groups, self.features // self.groups)
    y = conv_branches(computed_width, 1, self.groups, x, train)
    y = y + batch_norm(train, "bn_identity")(by_group[..., r:].reshape(*batch_shape, -1))
    # Each group's reserved channels first, then its computed ones; the ReLU keeps the reserved
    # channels as they are, since x >= 0 (Sec. 4.1).
    y = y.reshape(*batch_shape, self.groups, -1)
    return nn.relu(jnp.concatenate([by_group[..., :r], y], axis=-1).reshape(x.shape))


def check_reserve_ratio(ratio: float) -> None:
  if not 0 <= ratio < 1:
    raise ValueError(
      f"reserve_ratio must be in [0, 1), got {ratio}: 0 is RepVGG; 1 would reserve every "
      "channel, which is RepVGG of half the depth (Fig. 5) — build that with half the blocks"
    )


class RepVGG(BlockNetwork):
  """Stem RepBlock, stages of RepBlocks, GAP + linear head. Layers count from the stem (0).

  Stage i has `stage_sizes[i]` blocks of width `widths[i]`; its first block has stride 2,
  except stage 1's with the CIFAR stem (`stem="cifar"`: stem and stage 1 keep the resolution;
  `"imagenet"`: five stride-2 layers). Layers in `grouped_layers` have `groups` groups.

  With `reserve_ratio > 0` the blocks after the first of each stage pair up as
  (ReservingRepBlock, RepBlock) — the RM operation's RepVGG (Sec. 4.3); an unpaired last block
  stays a RepBlock. Ratio 0 is RepVGG.

    >>> model = RepVGG(stage_sizes=(5, 5, 5, 5), stem="cifar", reserve_ratio=0.25)  # repvgg21
    >>> [type(b).__name__ for b in model.layout()[1:6]]
    ['RepBlock', 'ReservingRepBlock', 'RepBlock', 'ReservingRepBlock', 'RepBlock']
  """

  stage_sizes: Sequence[int]
  widths: Sequence[int] = (64, 128, 256, 512)
  stem_width: int = 64
  stem: str = "imagenet"
  num_classes: int = 1000
  groups: int = 1
  grouped_layers: Sequence[int] = GROUPED_LAYERS
  reserve_ratio: float = 0.0

  def __post_init__(self):
    check_stem(self.stem)
    if len(self.stage_sizes) != len(self.widths):
      raise ValueError(
        f"stage_sizes {tuple(self.stage_sizes)} and widths {tuple(self.widths)} must have the "
        "same length"
      )
    check_reserve_ratio(self.reserve_ratio)
    super().__post_init__()

  def layout(self) -> tuple[nn.Module, ...]:
    first_stride = 1 if self.stem == "cifar" else 2
    parts: list[nn.Module] = [RepBlock(3, self.stem_width, first_stride, name="stem", parent=None)]
    in_features, layer = self.stem_width, 1
    for i, (size, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
      stage_stride = first_stride if i == 0 else 2
      for j in range(size):
        groups = self.groups if layer in self.grouped_layers else 1
        name = f"layer{i + 1}_{j}"
        # Blocks 1, 2 | 3, 4 | ... pair up; block 0 changes the shape and cannot reserve.
        if self.reserve_ratio > 0 and j % 2 == 1 and j + 1 < size:
          block = ReservingRepBlock(width, self.reserve_ratio, groups, name=name, parent=None)
        else:
          stride = stage_stride if j == 0 else 1
          block = RepBlock(in_features, width, stride, groups, name=name, parent=None)
        parts.append(block)
        in_features, layer = width, layer + 1
    parts.append(Head(self.num_classes, parent=None, name="head"))
    return tuple(parts)

  def feature_taps(self) -> tuple[str, ...]:
    """The last block of every stage (a RepBlock: an unpaired last block stays one)."""
    return tuple(f"layer{i + 1}_{n - 1}" for i, n in enumerate(self.stage_sizes) if n)


def _repvgg(stage_sizes, a: float, b: float, groups: int = 1):
  """RepVGG-A/B with width multipliers `a` (stages 1-3) and `b` (stage 4), RepVGG's Table 2."""
  return functools.partial(
    RepVGG,
    stage_sizes=stage_sizes,
    widths=(int(64 * a), int(128 * a), int(256 * a), int(512 * b)),
    stem_width=min(64, int(64 * a)),
    groups=groups,
  )


_A, _B = (2, 4, 14, 1), (4, 6, 16, 1)


def _depth_series(blocks_per_stage: int):
  """Fig. 8: a stem, then per stage one downsampling block and `blocks_per_stage` RepBlocks."""
  return functools.partial(RepVGG, stage_sizes=(1 + blocks_per_stage,) * 4)


PRESETS = {
  "repvgg_a0": _repvgg(_A, 0.75, 2.5),
  "repvgg_a1": _repvgg(_A, 1, 2.5),
  "repvgg_a2": _repvgg(_A, 1.5, 2.75),
  "repvgg_b0": _repvgg(_B, 1, 2.5),
  "repvgg_b1": _repvgg(_B, 2, 4),
  "repvgg_b1g2": _repvgg(_B, 2, 4, groups=2),
  "repvgg_b1g4": _repvgg(_B, 2, 4, groups=4),
  "repvgg_b2": _repvgg(_B, 2.5, 5),
  "repvgg_b2g2": _repvgg(_B, 2.5, 5, groups=2),
  "repvgg_b2g4": _repvgg(_B, 2.5, 5, groups=4),
  "repvgg_b3": _repvgg(_B, 3, 5),
  "repvgg_b3g2": _repvgg(_B, 3, 5, groups=2),
  "repvgg_b3g4": _repvgg(_B, 3, 5, groups=4),
  # Depth = layers with weights before the head: 1 + 4 * (1 + n).
  "repvgg21": _depth_series(4),
  "repvgg37": _depth_series(8),
  "repvgg69": _depth_series(16),
  "repvgg133": _depth_series(32),
}
