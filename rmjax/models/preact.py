"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks").

Every conv of a block is preceded by BN and ReLU (the "full pre-activation" unit of their
Fig. 4(e)), and nothing follows the sum: a block computes `x + F(x)`, so the identity shortcut
carries the un-normalised sum from block to block (their Eq. 4). A projection shortcut (a
strided 1x1 conv, no BN) reads the pre-activated input `relu(bn1(x))`, as the RMNet authors'
PreActResNet and timm's ResNetV2 do. The stem is a bare conv (CIFAR: 3x3; ImageNet: 7x7 stride 2
and a 3x3 max-pool) — the first block normalises its output — and a final BN-ReLU (`norm`)
precedes the head (their Sec. 4.1: the last unit is followed by an extra activation).

Names follow the ResNet's: `layer1_0/bn1`, `layer1_0/conv1`, ..., `layer2_0/proj_conv`,
`norm/bn`, `head/fc`; in block k, `bn{i}` normalises the input of `conv{i}`.

  >>> model = models.create("preactresnet18", num_classes=10, stem="cifar")
  >>> plain, plain_vars = rmjax.transforms.rm_convert(model, variables)  # exact (transforms.preact)
"""

from __future__ import annotations

import functools

import flax.linen as nn

from rmjax.models.layers import StagedNetwork, StemBase, batch_norm, conv
from rmjax.models.resnet import ResidualBlock


class PreActStem(StemBase):
  """`cifar`: 3x3 conv, stride 1. `imagenet`: 7x7 conv stride 2 + 3x3 max-pool stride 2. No BN
  or ReLU: the first block pre-activates."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    if self.kind == "cifar":
      return conv(self.features, 3, 1, name="conv")(x)
    x = conv(self.features, 7, 2, name="conv")(x)
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class PreActBlock(ResidualBlock):
  """A pre-activation residual block: `convs()` says its convs, BN-ReLU precedes each."""

  def __post_init__(self):
    if self.shortcut_bn:
      raise ValueError(f"{type(self).__name__} has no shortcut_bn (its shortcut carries x as is)")
    super().__post_init__()

  def convs(self) -> tuple[tuple[int, int, int], ...]:
    """`(width, kernel size, stride)` of conv1, conv2, ... in order."""
    raise TypeError(f"{type(self).__name__} must define convs()")

  @nn.compact
  def __call__(self, x, train: bool = False):
    a = nn.relu(batch_norm(train, "bn1")(x))
    y = a
    for i, (width, size, stride) in enumerate(self.convs()):
      if i:
        y = nn.relu(batch_norm(train, f"bn{i + 1}")(y))
      y = conv(width, size, stride, name=f"conv{i + 1}")(y)
    if not self.has_projection:
      return y + x
    return y + conv(self.out_features, 1, self.strides, name="proj_conv")(a)


class PreActBasicBlock(PreActBlock):
  """BN-ReLU-conv 3x3 (stride here), BN-ReLU-conv 3x3, plus the shortcut."""

  def convs(self):
    return ((self.inner(0), 3, self.strides), (self.features, 3, 1))


class PreActBottleneck(PreActBlock):
  """BN-ReLU-conv 1x1 (reduce), BN-ReLU-conv 3x3 (stride here), BN-ReLU-conv 1x1 (expand x4)."""

  expansion = 4
  num_inner = 2

  def convs(self):
    return ((self.inner(0), 1, 1), (self.inner(1), 3, self.strides), (self.out_features, 1, 1))


class PreActNorm(nn.Module):
  """The BN-ReLU after the last block (He et al. 2016, Sec. 4.1)."""

  features: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.relu(batch_norm(train, "bn")(x))


class PreActResNet(StagedNetwork):
  """Stem, stages of pre-activation blocks, BN-ReLU, head; see StagedNetwork for the stages."""

  block: type[PreActBlock] = PreActBasicBlock

  def stem_module(self):
    return PreActStem(self.stem_width, self.stem, parent=None, name="stem")

  def block_module(self, stage, in_features, width, stride, name, index):
    del stage, index
    return self.block(
      in_features, width, stride, shortcut_bn=self.shortcut_bn, parent=None, name=name
    )

  def layout(self) -> tuple[nn.Module, ...]:
    *body, head = super().layout()
    width = next((b.out_features for b in reversed(body) if isinstance(b, PreActBlock)), None)
    norm = PreActNorm(width or self.stem_width, parent=None, name="norm")
    return (*body, norm, head)


preactresnet18 = functools.partial(PreActResNet, stage_sizes=(2, 2, 2, 2), block=PreActBasicBlock)
preactresnet34 = functools.partial(PreActResNet, stage_sizes=(3, 4, 6, 3), block=PreActBasicBlock)
preactresnet50 = functools.partial(PreActResNet, stage_sizes=(3, 4, 6, 3), block=PreActBottleneck)

__all__ = [
  "PreActBasicBlock",
  "PreActBlock",
  "PreActBottleneck",
  "PreActNorm",
  "PreActResNet",
  "PreActStem",
  "preactresnet18",
  "preactresnet34",
  "preactresnet50",
]
