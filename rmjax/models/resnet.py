"""ResNet (He et al. 2016) in Flax linen, torchvision layout.

The layout matters for two reasons: PyTorch weights import one-to-one (stride on the 3x3 conv of
the bottleneck, 1x1 conv + BN projection shortcut, symmetric explicit padding), and the RM
transforms address every layer by its path (`layer2_0/conv1`, `layer2_0/proj_bn`, ...).

A network is described by `ResNet.layout()`: a tuple of *unbound* block modules (stem, blocks,
head). They are plain hashable data; `ResNet.__call__` clones them into itself, and
`rmjax.transforms.rm_convert` reads their fields to pick one converter per block type.

Example:
  >>> model = resnet18(num_classes=10, stem="cifar")
  >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  >>> logits = model.apply(variables, x, train=False)
"""

from __future__ import annotations

import functools

import flax.linen as nn

from rmjax.models.layers import (
  StagedNetwork,
  Stem,
  batch_norm,
  conv,
)


class ResidualBlock(nn.Module):
  """Fields and shortcut rule shared by the ResNet blocks; `expansion` sets the output width."""

  in_features: int
  features: int
  strides: int = 1
  # A per-channel BN on an identity shortcut, for sparsity training (Sec. 4.2): it gives the
  # channels the shortcut carries an importance score, which RM moves into the reserved
  # channels' BN scale so that pruning can remove them too.
  shortcut_bn: bool = False
  # The widths of the block's inner convs (BasicBlock: conv1; Bottleneck: conv1, conv2), None =
  # `features` each. Network slimming of a ResNet (the baseline of Sec. 5.1) can narrow only
  # these: the residual connection fixes the block's input and output widths.
  inner_features: tuple[int, ...] | None = None
  expansion = 1
  num_inner = 1  # how many inner convs `inner_features` sets

  def __post_init__(self):
    if self.inner_features is not None and len(self.inner_features) != self.num_inner:
      raise ValueError(
        f"{type(self).__name__} has {self.num_inner} inner conv(s); inner_features "
        f"{tuple(self.inner_features)} gives {len(self.inner_features)} widths"
      )
    super().__post_init__()

  @property
  def out_features(self) -> int:
    return self.features * self.expansion

  def inner(self, k: int) -> int:
    """The width of inner conv `k` (0-based)."""
    return self.features if self.inner_features is None else int(self.inner_features[k])

  def excite(self, y, train: bool):
    """The residual branch's output just before the sum: unchanged here; the SE blocks gate it
    by squeeze-and-excitation (`rmjax.models.se`)."""
    del train
    return y

  @property
  def has_projection(self) -> bool:
    """torchvision's rule: a 1x1 conv + BN shortcut where the stride or the width changes."""
    return self.strides != 1 or self.in_features != self.out_features


class BasicBlock(ResidualBlock):
  """Two 3x3 ConvBN layers; ReLU inside and after the residual sum."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = conv(self.inner(0), 3, self.strides, name="conv1")(x)
    y = nn.relu(batch_norm(train, "bn1")(y))
    y = conv(self.features, 3, 1, name="conv2")(y)
    y = batch_norm(train, "bn2")(y)
    return nn.relu(self.excite(y, train) + shortcut(self, x, train))


class Bottleneck(ResidualBlock):
  """1x1 (reduce) -> 3x3 (stride here, as torchvision) -> 1x1 (expand x4)."""

  expansion = 4
  num_inner = 2

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = conv(self.inner(0), 1, 1, name="conv1")(x)
    y = nn.relu(batch_norm(train, "bn1")(y))
    y = conv(self.inner(1), 3, self.strides, name="conv2")(y)
    y = nn.relu(batch_norm(train, "bn2")(y))
    y = conv(self.out_features, 1, 1, name="conv3")(y)
    y = batch_norm(train, "bn3")(y)
    return nn.relu(self.excite(y, train) + shortcut(self, x, train))


def shortcut(block: ResidualBlock, x, train: bool):
  """Identity (optionally through a BN, `shortcut_bn`), or a strided 1x1 conv + BN where the
  stride or width changes."""
  if not block.has_projection:
    return batch_norm(train, "shortcut_bn")(x) if block.shortcut_bn else x
  x = conv(block.out_features, 1, block.strides, name="proj_conv")(x)
  return batch_norm(train, "proj_bn")(x)


class ResNet(StagedNetwork):
  """A ResNet of `block`s (BasicBlock or Bottleneck); see StagedNetwork for the stages."""

  block: type[ResidualBlock] = BasicBlock
  # Per residual block, in layout order: its `inner_features` (a slimmed ResNet,
  # `transforms.prune_resnet`); None = every block at its stage width.
  inner_widths: tuple[tuple[int, ...], ...] | None = None

  def stem_module(self):
    return Stem(self.stem_width, self.stem, parent=None, name="stem")

  def block_module(self, stage, in_features, width, stride, name, index):
    if self.inner_widths is not None and len(self.inner_widths) != sum(self.stage_sizes):
      raise ValueError(
        f"inner_widths has {len(self.inner_widths)} entries for {sum(self.stage_sizes)} blocks"
      )
    inner = None if self.inner_widths is None else tuple(self.inner_widths[index])
    return self.block(
      in_features,
      width,
      stride,
      shortcut_bn=self.shortcut_bn,
      inner_features=inner,
      parent=None,
      name=name,
    )


resnet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
resnet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
resnet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
resnet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block=Bottleneck)
resnet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block=Bottleneck)

# He et al. 2016, Sec. 4.2: the CIFAR ResNets, 6n + 2 layers in three stages of widths 16/32/64.
# (The shortcut is a projection where the shape changes, as everywhere in rmjax, so they convert.)
_cifar_resnet = functools.partial(
  ResNet,
  block=BasicBlock,
  num_classes=10,
  stem="cifar",
  widths=(16, 32, 64),
  strides=(1, 2, 2),
  stem_width=16,
)
resnet20 = functools.partial(_cifar_resnet, stage_sizes=(3, 3, 3))
resnet32 = functools.partial(_cifar_resnet, stage_sizes=(5, 5, 5))
resnet44 = functools.partial(_cifar_resnet, stage_sizes=(7, 7, 7))
resnet56 = functools.partial(_cifar_resnet, stage_sizes=(9, 9, 9))
resnet110 = functools.partial(_cifar_resnet, stage_sizes=(18, 18, 18))
