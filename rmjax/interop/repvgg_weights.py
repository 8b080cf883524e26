"""RepVGG checkpoints of the RepVGG code (github.com/DingXiaoH/RepVGG) and of timm -> rmjax,
train-time or deploy-time.

Both hold rmjax's `models.RepVGG` (`repvgg_a0` ... `repvgg_b3g4`: same depths, widths, groups on
the even layers counting the stem as 0, stride-2 stem and stage starts, PyTorch padding, BN eps
1e-5) under other names:

  module              RepVGG code (`RepVGG-A0`, ...)    timm (`repvgg_a0`, ...)
  stem                `stage0`                          `stem`
  stage i, block j    `stage{i}.{j}` (i from 1)         `stages.{i - 1}.{j}`
  3x3 conv + BN       `rbr_dense.conv`, `rbr_dense.bn`  `conv_kxk.conv`, `conv_kxk.bn`
  1x1 conv + BN       `rbr_1x1.conv`, `rbr_1x1.bn`      `conv_1x1.conv`, `conv_1x1.bn`
  identity BN         `rbr_identity`                    `identity`
  deployed conv       `rbr_reparam`                     `reparam_conv`
  classifier          `linear`                          `head.fc`

A deploy-time file (`repvgg_model_convert` / `switch_to_deploy`; timm's `reparameterize`) is a
biased 3x3 conv + ReLU per block: exactly the `PlainNet` that `rm_convert` makes of the
train-time network, and it imports as that. The class count is read off the classifier. RepVGG-D2se
(squeeze-and-excitation in every block) and the RepVGG code's RepVGGplus have no rmjax
counterpart and are refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from rmjax import models
from rmjax.interop.plain_weights import classes_of, conv_bn_act, import_plain
from rmjax.interop.torchvision_weights import _leaf
from rmjax.interop.weights import Imported, Layout, gather
from rmjax.models.plain import Dense, GlobalAvgPool
from rmjax.models.repvgg import PRESETS

ARCHITECTURES = tuple(name for name in PRESETS if name.startswith("repvgg_"))
_SE = "squeeze-and-excitation blocks, which rmjax's RepVGG does not have"


@dataclasses.dataclass(frozen=True)
class Naming:
  """One code base's names for RepVGG's modules (see the module docstring)."""

  code: str  # for messages: "RepVGG code", "timm"
  stem: str
  block: Callable[[int, int], str]  # (stage from 1, block from 0) -> module name
  branches: Mapping[str, str]  # rmjax's RepBlock submodule -> its own
  reparam: str
  head: str
  se: str  # a key part that only SE blocks have


DING = Naming(
  code="RepVGG code",
  stem="stage0",
  block=lambda i, j: f"stage{i}.{j}",
  branches={
    "conv3x3": "rbr_dense.conv",
    "bn3x3": "rbr_dense.bn",
    "conv1x1": "rbr_1x1.conv",
    "bn1x1": "rbr_1x1.bn",
    "bn_identity": "rbr_identity",
  },
  reparam="rbr_reparam",
  head="linear",
  se=".se.",
)
TIMM = Naming(
  code="timm",
  stem="stem",
  block=lambda i, j: f"stages.{i - 1}.{j}",
  branches={
    "conv3x3": "conv_kxk.conv",
    "bn3x3": "conv_kxk.bn",
    "conv1x1": "conv_1x1.conv",
    "bn1x1": "conv_1x1.bn",
    "bn_identity": "identity",
  },
  reparam="reparam_conv",
  head="head.fc",
  se=".attn.",
)
# The RepVGG code's own names: RepVGG-A0 ... RepVGG-B3g4.
DING_ALIASES = {f"RepVGG-{name[7:].upper().replace('G', 'g')}": name for name in ARCHITECTURES}
DING_UNSUPPORTED = {"RepVGG-D2se": _SE, "repvgg_d2se": _SE}
DING_UNSUPPORTED.update(
  dict.fromkeys(("RepVGGplus-L2pse", "repvggplus"), "RepVGGplus is another network")
)
TIMM_UNSUPPORTED = {"repvgg_d2se": _SE}


def import_repvgg(
  naming: Naming, arch: str, weights: Mapping[str, np.ndarray], source: str
) -> Imported:
  """`arch` (one of ARCHITECTURES) with `naming`'s `weights`, train- or deploy-time."""
  model = models.create(arch, num_classes=classes_of(weights, f"{naming.head}.weight"))
  se_keys = sorted(key for key in weights if naming.se in key)
  # SE blocks are named once, not key by key as unexpected.
  problems = [f"unsupported: squeeze-and-excitation blocks ({se_keys[0]}, ...)"] if se_keys else []
  weights = {k: v for k, v in weights.items() if naming.se not in k}
  if f"{naming.stem}.{naming.reparam}.weight" in weights:
    return _deployed(naming, model, arch, weights, source, problems)

  def rule(path: tuple[str, ...]) -> tuple[str, Layout]:
    _, block, layer, leaf = path
    if block == "head":
      return _leaf(naming.head, leaf, linear=True)
    return _leaf(f"{_module(naming, block)}.{naming.branches[layer]}", leaf)

  variables = gather(
    model,
    weights,
    rule,
    source=f"{source} ({naming.code}, train-time)",
    ignore=lambda key: key.endswith("num_batches_tracked"),
    problems=problems,
  )
  return Imported(model, variables, f"{arch} ({naming.code})")


def _module(naming: Naming, block: str) -> str:
  """rmjax's block name ("stem", "layer2_0") -> the code base's."""
  if block == "stem":
    return naming.stem
  stage, index = block.removeprefix("layer").split("_")
  return naming.block(int(stage), int(index))


def _deployed(naming: Naming, model, arch: str, weights, source: str, problems) -> Imported:
  *blocks, head = model.layout()
  modules = []
  for block in blocks:
    conv, relu = conv_bn_act(
      block.in_features, block.features, 3, block.strides, bn=False, groups=block.groups
    )
    modules += [(f"{_module(naming, block.name)}.{naming.reparam}", conv), (None, relu)]
  modules += [(None, GlobalAvgPool()), (naming.head, Dense(blocks[-1].features, head.num_classes))]
  plain, variables = import_plain(
    modules, weights, source=f"{source} ({naming.code}, deploy-time)", problems=problems
  )
  return Imported(plain, variables, f"{arch} deploy-time ({naming.code})")
