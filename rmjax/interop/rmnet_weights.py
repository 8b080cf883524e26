"""The published RMNet code's checkpoints (github.com/fxmeng/RMNet) -> rmjax, before and after
its own `deploy()`.

Four of its model files, each one network of rmjax's (ARCH in `from_torch("rmnet:ARCH", ...)`
is rmjax's name, or the RMNet code's own):

  models/resnet2vgg.py  `rmnet18`, `rmnet34`, `rmnet20` ... `rmnet110`: `ResBlock`s ->
                        `resnet18` ... `resnet110` (`models.ResNet`, basic blocks)
  models/rmnext.py      `rmnext41_64x5_g16` ... `rmnext152_64x6_g32` (class `RMNeXt`) ->
                        `rmnext41x5_16` ... `rmnext152x6_32` (`models.RMNeXt`)
  models/rmobilenet.py  `mobilenetv2_imagenet`, `mobilenetv1_cifar` (class `RMobileNet`) ->
                        `mobilenetv2`, `mobilenetv1_cifar` (`models.MobileNetV2`, ReLU6)
  models/rmrepvgg.py    `rmrep_21` ... `rmrep_133` and `repvgg_21` ... (class `RMRep`) ->
                        `repvgg21` ... `repvgg133` (`models.RepVGG` with `reserve_ratio`)

A train-time file is the rmjax network layer for layer: the ResBlock is torchvision's basic
block (its keys too); RMNeXt's `RMBlock` is `RMNeXtBlock` (middle width `out * (T - 1)`, groups
of `cpg * 2**stage` channels), its `RepBlock` stem `RepVGGStem`; `RMobileNet` with `t_free` > 1
widens every block's output `t_free` times and carries only the first `in` channels across
(`BlockSpec(shortcut=in)`); `RMRep`'s `RMBlock` is `ReservingRepBlock` (its first
`int(planes * ratio)` channels reserved, `reserve_ratio` read off the shapes), paired with the
`RepBlock` after it as rmjax pairs them. The `running1`/`running2` statistics the code tracks
for its own `deploy()` are not needed (`rm_convert` reserves channels from the weights alone;
the fine-tuning form's reserved BNs are re-estimated from data, `rmjax.finetune`): ignored.

After `deploy()` the file holds a plain network, an `nn.Sequential` numbered module by module
(`0.weight`, `3.running_mean`, ...; `features.N.*` for RMobileNet). No rmjax residual model
holds those weights — they are the published conversion's output (reserved channels first, the
kept BNs of reserved channels set from `running1`/`running2`) — so it imports as a `PlainNet`,
rmjax's conversion target: BNs kept (`merge_bn=False`; RMobileNet always) or folded into conv
biases. With BNs folded, a ResNet's, RMNeXt's or RMRep's has the layer table `rm_convert` makes
of the rmjax network (rmjax puts reserved channels last); `rm_convert` on it folds kept BNs.

Depths, widths and strides are the named network's; what the published code decides by the
class count is read off the weights: the class count itself, and the stem (ImageNet's for 1000
classes: a 7x7 conv + max-pool, or two stride-2 RepBlocks; else CIFAR's) — from the stem's own
shapes where they show it, so a head replaced for other classes keeps its stem. RMobileNet's stem
stride (2 for 1000 classes, else 1) is not in the shapes: the class count decides, as there.
RMRep's CIFAR form (one stride-1 stem block, stage 1 without a first block) has no rmjax
counterpart and is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from rmjax import models
from rmjax.interop.plain_weights import classes_of, conv_bn_act, import_plain, sequential
from rmjax.interop.torchvision_weights import _leaf, _resnet_rule
from rmjax.interop.weights import Imported, Layout, WeightImportError, gather
from rmjax.models import mobilenet
from rmjax.models.mobilenet import BlockSpec, MobileNetV2
from rmjax.models.plain import (
  BatchNorm,
  Conv,
  Dense,
  GlobalAvgPool,
  Layer,
  MaxPool,
  PReLU,
  ReLU,
)

CODE = "RMNet code"
RESNETS = ("resnet18", "resnet34", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
RMNEXTS = (
  "rmnext26x3_32",
  "rmnext41x4_8",
  "rmnext41x5_16",
  "rmnext50x5_32",
  "rmnext50x6_32",
  "rmnext101x6_16",
  "rmnext152x6_32",
)
MOBILENETS = ("mobilenetv2", "mobilenetv1_cifar")
REPVGGS = ("repvgg21", "repvgg37", "repvgg69", "repvgg133")
ARCHITECTURES = (*RESNETS, *RMNEXTS, *MOBILENETS, *REPVGGS)
# The RMNet code's names for them (rmnext26x3_32 and 41x4_8 are its RMNeXt class, unnamed).
ALIASES = {
  **{f"rmnet{name.removeprefix('resnet')}": name for name in RESNETS},
  "rmnext41_64x5_g16": "rmnext41x5_16",
  "rmnext50_64x5_g32": "rmnext50x5_32",
  "rmnext50_64x6_g32": "rmnext50x6_32",
  "rmnext101_64x6_g16": "rmnext101x6_16",
  "rmnext152_64x6_g32": "rmnext152x6_32",
  "mobilenetv2_imagenet": "mobilenetv2",
  # RMRep with reserve_ratio > 0 (rmrep_*) or 0 (repvgg_*): one rmjax preset, the ratio read.
  **{f"{kind}_{name[6:]}": name for name in REPVGGS for kind in ("rmrep", "repvgg")},
}
UNSUPPORTED = {
  "rmnet1202": "rmjax has no 1202-layer ResNet preset",
  **dict.fromkeys(
    ("preactresvgg18", "preactresvgg34"),
    "its pre-activation ResVGG (models/preactresnet2vgg.py) is not mapped to an rmjax model",
  ),
  **dict.fromkeys(
    ("rmnet_pruning_18", "rmnet_pruning_34"),
    "its pruning masks are not rmjax's (prune a converted network with prune.py)",
  ),
  "rmrepse": "rmjax's RepVGG has no squeeze-and-excitation blocks",
}


def import_rmnet(arch: str, weights: Mapping[str, np.ndarray], source: str) -> Imported:
  """`arch` (one of ARCHITECTURES) with the RMNet code's `weights`, train- or deploy-time."""
  if arch in REPVGGS:
    return _rmrep(arch, weights, source)
  if arch in MOBILENETS:
    if "features.0.weight" in weights:  # deploy() flattened `features` into one Sequential
      return _mobilenet_deployed(arch, weights, source)
    return _mobilenet(arch, weights, source)
  if "0.weight" in weights:  # deploy() returned one nn.Sequential
    return _deployed(arch, weights, source)
  if arch in RMNEXTS:
    classes = classes_of(weights, "fc.weight")
    stem = _stem_kind(weights, "layer0.0.conv33.weight", "layer0.conv33.weight", classes)
    model = models.create(arch, num_classes=classes, stem=stem)
    rule = functools.partial(_rmnext_rule, stem)
  else:
    classes = classes_of(weights, "fc.weight")
    conv1 = weights.get("conv1.weight")
    kernel = conv1.shape[-1] if conv1 is not None and conv1.ndim == 4 else None
    stem = {7: "imagenet", 3: "cifar"}.get(kernel, "imagenet" if classes == 1000 else "cifar")
    model = models.create(arch, num_classes=classes, stem=stem)
    rule = _resnet_rule  # ResBlock's names are torchvision's BasicBlock's
  variables = gather(model, weights, rule, source=f"{source} ({CODE}, train-time)", ignore=_unused)
  return Imported(model, variables, f"{arch} ({CODE})")


def _unused(key: str) -> bool:
  # running1/running2: the statistics the RMNet code tracks for its own deploy().
  return key.endswith("num_batches_tracked") or ".running1." in key or ".running2." in key


def _stem_kind(weights, imagenet_key: str, cifar_key: str, classes: int) -> str:
  if imagenet_key in weights:
    return "imagenet"
  if cifar_key in weights:
    return "cifar"
  return "imagenet" if classes == 1000 else "cifar"


_REP_BRANCHES = {
  "conv3x3": "conv33",
  "bn3x3": "bn33",
  "conv1x1": "conv11",
  "bn1x1": "bn11",
  "bn_identity": "bn00",
}


def _rmnext_rule(stem: str, path: tuple[str, ...]) -> tuple[str, Layout]:
  # ("params", "stem", "conv3x3_1", "kernel") -> "layer0.1.conv33.weight": ImageNet's two
  # RepBlocks are an nn.Sequential, CIFAR's one RepBlock is `layer0` itself. The blocks are
  # named as a torchvision ResNet's.
  _, block, layer, leaf = path
  if block != "stem":
    return _resnet_rule(path)
  branch, index = layer.rsplit("_", 1)
  module = f"layer0.{index}" if stem == "imagenet" else "layer0"
  return _leaf(f"{module}.{_REP_BRANCHES[branch]}", leaf)


# --- RMRep ---------------------------------------------------------------------------------------


def _rmrep(arch: str, weights, source: str) -> Imported:
  """models/rmrepvgg.py's RMRep: `feature`, one flat Sequential of rmjax's blocks in layout
  order (stem, then each stage's), and `fc`; or after `deploy()`, one biased 3x3 conv + ReLU per
  block, pool, flatten, fc."""
  ref = models.create(arch)  # the blocks; the class count and the ratio are read below
  *blocks, _ = ref.layout()
  deployed = "0.weight" in weights
  convs = sum(1 for key, w in weights.items() if key.endswith("weight") and w.ndim == 4)
  if "feature.1.bn00.weight" in weights or (deployed and convs == len(blocks) - 1):
    raise WeightImportError(
      f"{source} holds the RMNet code's CIFAR RMRep (one stride-1 stem block, stage 1 starting "
      f"with its pairs), which rmjax's {arch} is not: rmjax's stage 1 starts with a plain block "
      "whatever the stem. Only its ImageNet form (1000 classes at build time) is supported."
    )
  if deployed:
    layers = []
    for block in blocks:
      layers += conv_bn_act(block.in_features, block.out_features, 3, block.strides, bn=False)
    fc = f"{len(layers) + 2}.weight"
    layers += [GlobalAvgPool(), None, Dense(blocks[-1].out_features, classes_of(weights, fc))]
    plain, variables = import_plain(
      sequential(layers), weights, source=f"{source} ({CODE}, {arch} after deploy())"
    )
    return Imported(plain, variables, f"{arch} after deploy() ({CODE})")
  # The first block of stage 1 after its strided one reserves `planes - conv33's outputs`.
  first = weights.get("feature.2.conv33.weight")
  ratio = 0.0
  if first is not None and first.ndim == 4 and 0 < first.shape[0] <= first.shape[1]:
    ratio = 1 - first.shape[0] / first.shape[1]  # else 0: `gather` names the shapes
  model = models.create(arch, num_classes=classes_of(weights, "fc.weight"), reserve_ratio=ratio)
  index = {block.name: i for i, block in enumerate(blocks)}

  def rule(path: tuple[str, ...]) -> tuple[str, Layout]:
    _, block, layer, leaf = path
    if block == "head":
      return _leaf("fc", leaf, linear=True)
    return _leaf(f"feature.{index[block]}.{_REP_BRANCHES[layer]}", leaf)

  variables = gather(model, weights, rule, source=f"{source} ({CODE}, train-time)", ignore=_unused)
  return Imported(model, variables, f"{arch} reserve_ratio {ratio:g} ({CODE})")


# --- RMobileNet --------------------------------------------------------------------------------

# mobilenetv1_cifar's setting: (expansion t, width c, repeats n, stride s) per entry, after a
# stem of 32 and a first (depthwise, project) block of output width 32; the last 1x1 conv is 1024
# wide. Every block's output is `t_free` (8) times c; its shortcut carries the first c channels.
_V1_CIFAR = (
  (2, 32, 1, 2),
  (3, 32, 1, 1),
  (4, 64, 1, 2),
  (3, 64, 1, 1),
  (4, 128, 1, 2),
  (3, 128, 5, 1),
  (4, 256, 1, 2),
  (3, 256, 1, 1),
)


def rmobilenet(arch: str, num_classes: int) -> MobileNetV2:
  """The RMNet code's `RMobileNet` `arch` as rmjax's MobileNetV2 (ReLU6); its stem has stride 2
  for 1000 classes, else 1, as there."""
  stem = "imagenet" if num_classes == 1000 else "cifar"
  if arch == "mobilenetv2":  # mobilenetv2_imagenet: Sandler et al.'s widths, t_free 1
    return mobilenet.mobilenetv2(num_classes=num_classes, stem=stem)
  free, width = 8, 32
  blocks = [BlockSpec(0, width * free, 1, 0)]
  for t, c, n, s in _V1_CIFAR:
    for _ in range(n):  # the RMNet code gives every repeat the entry's stride
      shortcut = width if s == 1 and width == c else 0
      blocks.append(BlockSpec(round(width * t), c * free, s, shortcut))
      width = c
  return MobileNetV2(
    tuple(blocks), stem_features=32, last_features=1024, num_classes=num_classes, stem=stem
  )


# `InvertedResidual.conv` is one flat Sequential (ReLU6 at 2 and 5); the first block is a
# Sequential (depthwise, BN, ReLU6, project, BN) of its own.
_EXPANDING = {
  "expand": "conv.0",
  "expand_bn": "conv.1",
  "depthwise": "conv.3",
  "depthwise_bn": "conv.4",
  "project": "conv.6",
  "project_bn": "conv.7",
}
_FIRST = {"depthwise": "0", "depthwise_bn": "1", "project": "3", "project_bn": "4"}


def _mobilenet(arch: str, weights, source: str) -> Imported:
  model = rmobilenet(arch, classes_of(weights, "classifier.1.weight"))

  def rule(path: tuple[str, ...]) -> tuple[str, Layout]:
    _, block, layer, leaf = path
    if block == "head":
      return _leaf("classifier.1", leaf, linear=True)
    if block in ("stem", "last"):
      index = 0 if block == "stem" else len(model.blocks) + 1
      return _leaf(f"features.{index}.{'0' if layer == 'conv' else '1'}", leaf)
    k = int(block.removeprefix("block"))
    names = _EXPANDING if model.blocks[k - 1].hidden else _FIRST
    return _leaf(f"features.{k}.{names[layer]}", leaf)

  variables = gather(model, weights, rule, source=f"{source} ({CODE}, train-time)", ignore=_unused)
  return Imported(model, variables, f"{arch} ({CODE})")


# --- after deploy() ----------------------------------------------------------------------------


def _deployed(arch: str, weights, source: str) -> Imported:
  """RMNet / RMNeXt after `deploy(merge_bn)`: stem, one (conv, [BN], ReLU) per conv of each
  block, average pool, flatten, fc."""
  bn = any(key.endswith(".running_mean") for key in weights)
  if arch in RMNEXTS:
    # ImageNet's second stem conv (3x3) is module 2; CIFAR's module 2 is a block's 1x1 conv.
    second = weights.get("2.weight")
    imagenet = second is not None and second.ndim == 4 and second.shape[-1] == 3
    stem = "imagenet" if imagenet else "cifar"
    model = models.create(arch, stem=stem)  # its blocks; the class count is the fc's, below
    layers = _rmnext_deployed(model, bn)
  else:
    first = weights["0.weight"]
    stem = "imagenet" if first.ndim == 4 and first.shape[-1] == 7 else "cifar"
    model = models.create(arch, stem=stem)
    layers = _resnet_deployed(model, bn)
  fc = f"{len(layers) + 2}.weight"  # after the pool and the flatten
  width = model.layout()[-2].out_features
  layers += [GlobalAvgPool(), None, Dense(width, classes_of(weights, fc))]  # None: nn.Flatten
  form = "BN kept" if bn else "BN folded"
  plain, variables = import_plain(
    sequential(layers), weights, source=f"{source} ({CODE}, {arch} after deploy(), {form})"
  )
  return Imported(plain, variables, f"{arch} after deploy(), {form} ({CODE})")


def _resnet_deployed(model, bn: bool) -> list[Layer | None]:
  # The stem's BN is folded into its conv even with merge_bn=False; each ResBlock becomes two
  # 3x3 convs, the first `features + in` wide: the input reserved (first), then conv1's.
  stem, *blocks, _ = model.layout()
  layers: list[Layer | None]
  if stem.kind == "imagenet":
    layers = [*conv_bn_act(3, stem.features, 7, 2, bn=False), MaxPool(3, 2, 1)]
  else:
    layers = conv_bn_act(3, stem.features, 3, 1, bn=False)
  for block in blocks:
    mid = block.features + block.in_features
    layers += conv_bn_act(block.in_features, mid, 3, block.strides, bn=bn)
    layers += conv_bn_act(mid, block.out_features, 3, 1, bn=bn)
  return layers


def _rmnext_deployed(model, bn: bool) -> list[Layer | None]:
  # RepBlocks fold into one biased 3x3 conv each; an RMBlock's three convs carry `in` reserved
  # channels (first), the grouped one as Dirac groups of the same group size.
  stem, *blocks, _ = model.layout()
  layers: list[Layer | None] = []
  width = 3
  for stride in stem.strides:
    layers += conv_bn_act(width, stem.features, 3, stride, bn=False)
    width = stem.features
  for block in blocks:
    mid = block.mid_features + block.in_features
    groups = mid // block.channels_per_group
    layers += conv_bn_act(block.in_features, mid, 1, bn=bn)
    layers += conv_bn_act(mid, mid, 3, block.strides, bn=bn, groups=groups)
    layers += conv_bn_act(mid, block.out_features, 1, bn=bn)
  return layers


def _mobilenet_deployed(arch: str, weights, source: str) -> Imported:
  """RMobileNet after `deploy()`: `features` is one flat Sequential of every conv, BN, ReLU6
  and PReLU; blocks with a shortcut became (1x1, depthwise, 1x1) convs carrying `in` channels
  first, behind PReLUs (slope 1 on them, 0 elsewhere); then each (project conv, BN, next expand
  conv, BN) was fused into one bias-free 1x1 conv and the second BN."""
  model = rmobilenet(arch, classes_of(weights, "classifier.1.weight"))
  stem, *blocks, last, _ = model.layout()
  relu6 = ReLU(max_value=6)
  layers = [*conv_bn_act(3, stem.features, 3, stem.strides, bn=True, act=relu6)]
  for block in blocks:
    r, dw, out = block.shortcut, block.depthwise_features, block.features
    mid = dw + r
    act = PReLU(mid) if r else relu6
    if block.hidden_features:
      layers += conv_bn_act(block.in_features, mid, 1, bn=True, act=act)
    layers += conv_bn_act(mid, mid, 3, block.strides, bn=True, groups=mid, act=act)
    layers += conv_bn_act(mid, out, 1, bn=True)[:2]  # the linear bottleneck
  layers += conv_bn_act(last.in_features, last.features, 1, bn=True, act=relu6)
  modules = sequential(_fuse_pointwise_pairs(layers), "features.")
  modules += [(None, GlobalAvgPool()), ("classifier.1", Dense(last.features, model.num_classes))]
  plain, variables = import_plain(
    modules, weights, source=f"{source} ({CODE}, {arch} after deploy())"
  )
  note = (
    "the RMNet code's deploy() puts PReLUs (slope 0: ReLU) where the trained network had ReLU6 "
    "in blocks with a shortcut; imported as the file computes it. Import the train-time "
    "checkpoint for a conversion that keeps the ReLU6 clip exactly."
  )
  return Imported(plain, variables, f"{arch} after deploy() ({CODE})", notes=(note,))


def _fuse_pointwise_pairs(layers: list[Layer]) -> list[Layer]:
  """RMobileNet.deploy's pass: each (conv, BN, conv, BN) run -> a bias-free 1x1 conv from the
  first's input to the second's output, then the second BN; left to right, as there."""
  out, i = [], 0
  while i < len(layers):
    run = layers[i : i + 4]
    kinds = [type(layer) for layer in run]
    if kinds == [Conv, BatchNorm, Conv, BatchNorm]:
      out += [Conv(run[0].in_features, run[2].out_features, 1, use_bias=False), run[3]]
      i += 4
    else:
      out.append(layers[i])
      i += 1
  return out
