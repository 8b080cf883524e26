"""Model registry: `create(name, **kwargs)` builds any known architecture by name.

>>> from rmjax import models
>>> model = models.create("resnet50", num_classes=1000, stem="imagenet")
>>> models.names()[:3]
['resnet101', 'resnet152', 'resnet18']
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from rmjax.models.layers import Head, StagedNetwork, Stem
from rmjax.models.mobilenet import (
  BlockSpec,
  ConvBN,
  DepthwiseSeparable,
  InvertedResidual,
  MobileNetV1,
  MobileNetV2,
  mobilenetv2,
  mobilenetv2_to_v1,
)
from rmjax.models.plain import (
  BatchNorm,
  Conv,
  Dense,
  GlobalAvgPool,
  Layer,
  MaxPool,
  PlainNet,
  PReLU,
  ReLU,
  SqueezeExcite,
)
from rmjax.models.preact import (
  PreActBasicBlock,
  PreActBottleneck,
  PreActNorm,
  PreActResNet,
  PreActStem,
  preactresnet18,
  preactresnet34,
  preactresnet50,
)
from rmjax.models.repvgg import PRESETS as _REPVGG_PRESETS
from rmjax.models.repvgg import RepBlock, RepVGG, ReservingRepBlock
from rmjax.models.resnet import (
  BasicBlock,
  Bottleneck,
  ResidualBlock,
  ResNet,
  resnet18,
  resnet20,
  resnet32,
  resnet34,
  resnet44,
  resnet50,
  resnet56,
  resnet101,
  resnet110,
  resnet152,
)
from rmjax.models.rmnext import PRESETS as _RMNEXT_PRESETS
from rmjax.models.rmnext import RepVGGStem, RMNeXt, RMNeXtBlock
from rmjax.models.se import SEBasicBlock, SEBottleneck, SEResNet, seresnet18, seresnet34, seresnet50

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
  "resnet18": resnet18,
  "resnet34": resnet34,
  "resnet50": resnet50,
  "resnet101": resnet101,
  "resnet152": resnet152,
  # CIFAR ResNets of He et al. (three stages, widths 16/32/64).
  "resnet20": resnet20,
  "resnet32": resnet32,
  "resnet44": resnet44,
  "resnet56": resnet56,
  "resnet110": resnet110,
  # The paper's RMNet family (Sec. 5.4, Table 3): rmnext{depth}x{T}_{channels per group}.
  **_RMNEXT_PRESETS,
  # RepVGG (Ding et al. 2021): repvgg_a0 ... repvgg_b3g4; and the paper's depth series of Fig. 8
  # (repvgg21/37/69/133), all with `reserve_ratio` for the RM operation's RepVGG (Sec. 4.3).
  **_REPVGG_PRESETS,
  # MobileNets (Sec. 4.4, Table 2): Sandler et al.'s V2, Howard et al.'s V1, and the paper's
  # re-designed V2 whose RM + fusion is exactly V1. All take width, stem, activation.
  "mobilenetv1": MobileNetV1,
  "mobilenetv2": mobilenetv2,
  "mobilenetv2_to_v1": mobilenetv2_to_v1,
  # SE-ResNets (Hu et al. 2018): squeeze-and-excitation on each block's branch, before the sum.
  "seresnet18": seresnet18,
  "seresnet34": seresnet34,
  "seresnet50": seresnet50,
  # Pre-activation ResNets (He et al. 2016, "Identity Mappings"): BN-ReLU before every conv.
  "preactresnet18": preactresnet18,
  "preactresnet34": preactresnet34,
  "preactresnet50": preactresnet50,
}


def register(name: str, factory: Callable[..., nn.Module]) -> None:
  """Makes `create(name, ...)` call `factory(...)`. Names are unique."""
  if name in _REGISTRY:
    raise ValueError(f"model name {name!r} is already registered")
  _REGISTRY[name] = factory


def names() -> list[str]:
  """All names `create` accepts, sorted."""
  return sorted(_REGISTRY)


def create(name: str, **kwargs) -> nn.Module:
  """Builds the architecture called `name`; keyword arguments override its defaults.

  Raises:
    ValueError: for an unknown name (the message lists the known ones) or an argument the
      architecture does not take.
  """
  try:
    factory = _REGISTRY[name]
  except KeyError:
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}") from None
  try:
    return factory(**kwargs)
  except TypeError as e:
    raise ValueError(f"bad arguments for model {name!r}: {e}") from None


__all__ = [
  "BasicBlock",
  "BlockSpec",
  "ConvBN",
  "DepthwiseSeparable",
  "InvertedResidual",
  "MobileNetV1",
  "MobileNetV2",
  "PReLU",
  "PreActBasicBlock",
  "PreActBottleneck",
  "PreActNorm",
  "PreActResNet",
  "PreActStem",
  "BatchNorm",
  "Bottleneck",
  "Conv",
  "Dense",
  "GlobalAvgPool",
  "Head",
  "Layer",
  "MaxPool",
  "PlainNet",
  "ReLU",
  "RMNeXt",
  "RMNeXtBlock",
  "RepBlock",
  "RepVGG",
  "RepVGGStem",
  "ReservingRepBlock",
  "ResNet",
  "ResidualBlock",
  "SEBasicBlock",
  "SEBottleneck",
  "SEResNet",
  "SqueezeExcite",
  "StagedNetwork",
  "Stem",
  "create",
  "mobilenetv2",
  "mobilenetv2_to_v1",
  "names",
  "preactresnet18",
  "preactresnet34",
  "preactresnet50",
  "register",
  "resnet18",
  "resnet20",
  "resnet32",
  "resnet34",
  "resnet44",
  "resnet50",
  "resnet56",
  "resnet101",
  "resnet110",
  "resnet152",
  "seresnet18",
  "seresnet34",
  "seresnet50",
]
