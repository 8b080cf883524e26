"""Model registry: `create(name, **kwargs)` builds any known architecture by name.

>>> from rmjax import models
>>> model = models.create("resnet50", num_classes=1000, stem="imagenet")
>>> models.names()[:3]
['resnet101', 'resnet152', 'resnet18']
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from rmjax.models.plain import (
  BatchNorm,
  Conv,
  Dense,
  GlobalAvgPool,
  Layer,
  MaxPool,
  PlainNet,
  ReLU,
)
from rmjax.models.resnet import (
  BasicBlock,
  Bottleneck,
  Head,
  ResidualBlock,
  ResNet,
  StagedNetwork,
  Stem,
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
  "RepVGGStem",
  "ResNet",
  "ResidualBlock",
  "StagedNetwork",
  "Stem",
  "create",
  "names",
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
]
