"""SE-ResNet (Hu et al. 2018, "Squeeze-and-Excitation Networks"): ResNet blocks whose residual
branch is gated channel-wise before the sum.

The standard placement (Hu et al., Fig. 3): after the last BN of the residual branch, before the
addition, so `out = relu(se(bn2(conv2(...))) + shortcut(x))`. The SE's bottleneck is
`out_features // se_reduction` units wide (at least 1; Hu et al. use reduction 16). Blocks and
network are ResNet's (`rmjax.models.resnet`), with the branch gated through `ResidualBlock.excite`;
the SE's variables live under `<block>/se/fc1` and `<block>/se/fc2`.

  >>> model = models.create("seresnet18", num_classes=10, stem="cifar")
  >>> plain, plain_vars = rmjax.transforms.rm_convert(model, variables)   # exact (transforms.se)
"""

from __future__ import annotations

import functools

from rmjax.models.resnet import BasicBlock, Bottleneck, ResNet
from rmjax.models.squeeze_excite import SqueezeExcitation

SE_REDUCTION = 16  # Hu et al., Sec. 6.1: the reduction ratio r of their experiments


def _se_features(block) -> int:
  return max(1, block.out_features // block.se_reduction)


def _excite(block, y, train: bool):
  del train  # no BN inside the SE
  return SqueezeExcitation(block.se_features, name="se")(y)


class SEBasicBlock(BasicBlock):
  """ResNet's basic block with squeeze-and-excitation on its branch (before the sum)."""

  se_reduction: int = SE_REDUCTION
  se_features = property(_se_features)
  excite = _excite


class SEBottleneck(Bottleneck):
  """ResNet's bottleneck with squeeze-and-excitation on its branch (before the sum)."""

  se_reduction: int = SE_REDUCTION
  se_features = property(_se_features)
  excite = _excite


class SEResNet(ResNet):
  """A ResNet of SE blocks (SEBasicBlock or SEBottleneck), `se_reduction` in every block."""

  block: type = SEBasicBlock
  se_reduction: int = SE_REDUCTION

  def block_module(self, stage, in_features, width, stride, name, index):
    block = super().block_module(stage, in_features, width, stride, name, index)
    return block.clone(se_reduction=self.se_reduction)


seresnet18 = functools.partial(SEResNet, stage_sizes=(2, 2, 2, 2), block=SEBasicBlock)
seresnet34 = functools.partial(SEResNet, stage_sizes=(3, 4, 6, 3), block=SEBasicBlock)
seresnet50 = functools.partial(SEResNet, stage_sizes=(3, 4, 6, 3), block=SEBottleneck)
