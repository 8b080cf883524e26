"""Layers shared by every model: conv and BN as torchvision builds them, stems, the
classifier head, and the networks that are a sequence of blocks (`BlockNetwork`) or stages of
residual blocks (`StagedNetwork`).

The RM transforms read these modules' fields (`rmjax.transforms`), so the architecture is plain
hashable data and every layer is named for the path its variables live under.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from rmjax.models.conv import Conv
from rmjax.models.features import run_chain, tap_indices

# torchvision's defaults: BN eps 1e-5, running-average momentum 0.1 (flax counts the other way).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
STEMS = ("cifar", "imagenet")

# He init, fan-out, as torchvision does for convolutions.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(
  features: int, kernel_size: int, stride: int = 1, name: str | None = None, *, groups: int = 1
) -> Conv:
  """A bias-free conv with PyTorch's symmetric padding (k // 2 on every side), `groups` groups.

  `Conv` is `nn.Conv`'s drop-in (same variables) that picks a fast implementation per shape.
  """
  pad = kernel_size // 2
  return Conv(
    features,
    (kernel_size, kernel_size),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    feature_group_count=groups,
    use_bias=False,
    kernel_init=conv_init,
    name=name,
  )


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(
    use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
  )


def check_stem(stem: str) -> None:
  """ValueError for a stem kind other than those in STEMS."""
  if stem not in STEMS:
    raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")


class StemBase(nn.Module):
  """A stem of `features` output channels for `kind` in STEMS (CIFAR or ImageNet inputs)."""

  features: int = 64
  kind: str = "cifar"

  def __post_init__(self):
    check_stem(self.kind)
    super().__post_init__()


class Stem(StemBase):
  """`cifar`: 3x3 conv, stride 1. `imagenet`: 7x7 conv stride 2 + 3x3 max-pool stride 2."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.kind == "cifar":
      x = conv(self.features, 3, 1, name="conv")(x)
    else:
      x = conv(self.features, 7, 2, name="conv")(x)
    x = nn.relu(batch_norm(train, "bn")(x))
    if self.kind == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    return x


class Head(nn.Module):
  """Global average pool and a linear classifier."""

  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return nn.Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))


class BlockNetwork(nn.Module):
  """A network that is the sequence of blocks `layout()` returns, applied in order.

  `layout()` gives unbound block modules (`parent=None`, each with its name); `__call__` binds
  clones of them, so the variables of block `b` live under `b.name`. The blocks' fields are the
  architecture that `rmjax.transforms.rm_convert` reads.
  """

  def layout(self) -> tuple[nn.Module, ...]:
    raise TypeError(f"{type(self).__name__} must define layout()")

  def feature_taps(self) -> tuple[str, ...]:
    """The names of the blocks whose outputs `features=True` returns (`rmjax.models.features`)."""
    raise TypeError(f"{type(self).__name__} does not define feature_taps()")

  @nn.compact
  def __call__(self, x, train: bool = False, *, features: bool = False):
    """Logits; with `features=True` the tuple of the tapped blocks' outputs, finest first (the
    blocks after the last tap, the head among them, do not run)."""
    layout = self.layout()
    taps = tap_indices(layout, self.feature_taps()) if features else ()

    def step(part):
      return lambda x: part.clone(parent=self, name=part.name)(x, train=train)

    return run_chain([step(part) for part in layout], x, taps)


class StagedNetwork(BlockNetwork):
  """Stem, stages of residual blocks, head: described by `layout()`, applied in that order.

  Stage i has `stage_sizes[i]` blocks of width `widths[i]`, the first with stride `strides[i]`.
  Subclasses say how to build their stem and their blocks.
  """

  stage_sizes: Sequence[int]
  num_classes: int = 1000
  stem: str = "imagenet"
  widths: Sequence[int] = (64, 128, 256, 512)
  strides: Sequence[int] = (1, 2, 2, 2)
  stem_width: int = 64
  shortcut_bn: bool = False  # see ResidualBlock.shortcut_bn

  def stem_module(self) -> nn.Module:
    raise TypeError(f"{type(self).__name__} must define stem_module()")

  def block_module(
    self, stage: int, in_features: int, width: int, stride: int, name: str, index: int
  ):
    """Residual block number `index` (counted over all stages) of stage `stage`."""
    raise TypeError(f"{type(self).__name__} must define block_module()")

  def layout(self) -> tuple[nn.Module, ...]:
    """The network as a sequence of unbound blocks: stem, residual blocks, head."""
    if not len(self.stage_sizes) == len(self.widths) == len(self.strides):
      raise ValueError(
        f"stage_sizes {tuple(self.stage_sizes)}, widths {tuple(self.widths)} and strides "
        f"{tuple(self.strides)} must have the same length"
      )
    parts: list[nn.Module] = [self.stem_module()]
    in_features = self.stem_width
    for i, (size, width, stride) in enumerate(
      zip(self.stage_sizes, self.widths, self.strides, strict=True)
    ):
      for j in range(size):
        block = self.block_module(
          i, in_features, width, stride if j == 0 else 1, f"layer{i + 1}_{j}", len(parts) - 1
        )
        parts.append(block)
        in_features = block.out_features
    parts.append(Head(self.num_classes, parent=None, name="head"))
    return tuple(parts)

  def feature_taps(self) -> tuple[str, ...]:
    """The last block of every stage (`layout()` names it `layer{i + 1}_{size - 1}`)."""
    return tuple(f"layer{i + 1}_{n - 1}" for i, n in enumerate(self.stage_sizes) if n)
