"""What the benchmark measures: suites of `Network`s, residual networks beside their plain forms.

A `Network` is a name, an apply function and its variables. A suite builds the networks of one
comparison (a group): a baseline — the residual network, or RepVGG — and the plain networks
converted by RM, once per execution mode of `PLAIN_MODES`. Another implementation of plain
networks is another entry of `PLAIN_MODES`; another framework or architecture, another suite.

  >>> nets = build(["resnet18"], Settings(modes=("dense", "structured")))
  >>> [n.name for n in nets]
  ['ResNet-18', 'RMNet-18 (dense)', 'RMNet-18 (structured)']

The `imagenet` suite is the speed column of Table 3 (ImageNet rows, 224x224 with
`bench.py --image_size=224`): ResNet-50/101/152 and the RMNeXt presets, residual and plain,
and RMNet-50 (ResNet-50's plain form); `PAPER_IMAGENET` holds the paper's V100 imgs/s.
`Settings(tiny=True)` builds every suite's architectures narrow and shallow (same blocks, same
code paths) for tests and dry runs.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from rmjax import models, transforms
from rmjax.models.plain import PlainNet
from rmjax.models.resnet import ResNet
from rmjax.models.structured import check_structure, structured_choice
from rmjax.randomize import random_variables


@dataclasses.dataclass(frozen=True, eq=False)
class Network:
  """One row of the benchmark: `apply(variables, images) -> logits`.

  `group` collects a baseline with what is compared to it; `role` is "baseline" (what speed-ups
  refer to) or "plain". `reference` is the network this one must compute exactly (the one it
  was converted from): the benchmark reports their max |logit difference|. `model` is the Flax
  module `apply` runs (a PlainNet in any mode): what training steps and PyTorch twins
  (`rmjax.bench.torch_twins`) are built from.
  """

  name: str
  group: str
  role: str
  apply: Callable
  variables: Any
  image_size: int
  mode: str = ""
  reference: Network | None = None
  model: Any = None
  default: bool = False  # a plain network in the form `plain.apply` runs it by default


# How a PlainNet runs, by name (bench.py --modes). "dense" is the canonical form; "structured"
# skips the Dirac zeros that RM adds (rmjax.models.structured); "auto" is `plain.apply`'s
# default, each conv in the form `structured.runs_structured` picks for the platform.
PLAIN_MODES: dict[str, Callable[[PlainNet], Callable]] = {
  "dense": lambda plain: functools.partial(plain.apply, structured=False),
  "structured": lambda plain: functools.partial(plain.apply, structured=True),
  "auto": lambda plain: plain.apply,
}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every suite builds for: image size (<= 64: CIFAR stems and 10 classes, else ImageNet
  stems and 1000 classes), plain execution modes, dtype of variables (and inputs), seed."""

  image_size: int = 32
  modes: tuple[str, ...] = ("dense", "structured")
  dtype: str = "float32"
  seed: int = 0
  tiny: bool = False

  @property
  def cifar(self) -> bool:
    return self.image_size <= 64

  def create(self, name: str, imagenet: bool | None = None, **kwargs):
    """`models.create(name)` for these settings: CIFAR stem and 10 classes, or ImageNet's
    (`imagenet`; default: by image size), narrow and shallow if `tiny`."""
    imagenet = not self.cifar if imagenet is None else imagenet
    if self.tiny:
      kwargs = {**tiny_overrides(name), **kwargs}
    stem = "imagenet" if imagenet else "cifar"
    return models.create(name, num_classes=1000 if imagenet else 10, stem=stem, **kwargs)


def tiny_overrides(name: str) -> dict:
  """The keyword arguments that make preset `name` tiny: two stages, of two blocks (identity
  shortcut) and one (projection, stride 2), 4-16 channels wide (RMNeXt: 8 channels a group in
  the first stage, so that every expansion divides)."""
  stages = dict(stage_sizes=(2, 1), strides=(1, 2), stem_width=8)
  if name.startswith("rmnext"):
    return dict(stages, widths=(8, 16), channels_per_group=8)
  if name.startswith("resnet"):
    return dict(stages, widths=(4, 8))
  if name.startswith("mobilenet"):
    return dict(width=0.25)
  return {}


def cast(tree, dtype: str):
  """Floating-point leaves of `tree` in `dtype`."""
  return jax.tree.map(
    lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
  )


def residual(label: str, model, settings: Settings, role: str = "baseline"):
  """`(Network, float32 variables)` of a model with random variables (non-trivial BN)."""
  x = jax.ShapeDtypeStruct((1, settings.image_size, settings.image_size, 3), jnp.float32)
  variables = random_variables(model, x, settings.seed)
  apply = functools.partial(model.apply, train=False)
  dtype = settings.dtype
  net = Network(label, label, role, apply, cast(variables, dtype), settings.image_size, model=model)
  return net, variables


def plain_forms(label: str, source: Network, model, variables, settings: Settings):
  """`rm_convert(model, variables)` run in each of `settings.modes`, in `source`'s group:
  "structured" only where the conversion recorded Dirac structure to skip, "auto" only where it
  runs some conv otherwise than the other modes do (else that mode's network is marked
  `default`, as is every mode that runs each conv as `plain.apply`'s default does)."""
  if not settings.modes:
    return []
  plain, plain_vars = transforms.rm_convert_jit(model, variables)
  problems = check_structure(plain, plain_vars)
  if problems:
    raise AssertionError("converted kernels lack their recorded structure:\n" + "\n".join(problems))
  plain_vars = cast(plain_vars, settings.dtype)
  recorded = tuple(bool(getattr(layer, "structured", False)) for layer in plain.layers)
  runs = {"dense": (False,) * len(recorded), "structured": recorded}
  runs["auto"] = structured_choice(plain)
  nets: dict[tuple[bool, ...], Network] = {}
  # "auto" last: it is timed only if no other mode runs the same program.
  for mode in sorted(settings.modes, key=lambda m: m == "auto"):
    if (mode == "structured" and not any(recorded)) or runs[mode] in nets:
      continue
    nets[runs[mode]] = Network(
      f"{label} ({mode})",
      source.group,
      "plain",
      PLAIN_MODES[mode](plain),
      plain_vars,
      settings.image_size,
      mode=mode,
      reference=source,
      model=plain,
      default=runs[mode] == runs["auto"],
    )
  return list(nets.values())


def rm_pair(
  model_name: str,
  residual_label: str,
  plain_label: str | None,
  imagenet: bool | None = None,
  **model_kwargs,
):
  """A suite: a residual network and its RM plain form in every mode (none without a
  `plain_label`); ImageNet's stem and classes if `imagenet` (default: by image size)."""

  def build_suite(settings: Settings) -> list[Network]:
    model = settings.create(model_name, imagenet, **model_kwargs)
    if plain_label is None:
      return [residual(residual_label, model, settings)[0]]
    net, variables = residual(residual_label, model, settings)
    return [net, *plain_forms(plain_label, net, model, variables, settings)]

  return build_suite


def repvgg(settings: Settings) -> list[Network]:
  """RepVGG-A0 and RM+RepVGG-A0 (25% reserved), both deployed: single 3x3 convs of the same
  shapes (Fig. 5 (c)). Each is checked against its own multi-branch training form."""
  nets = []
  for label, ratio in (("RepVGG-A0 deploy", 0.0), ("RM+RepVGG-A0 deploy, 25% reserved", 0.25)):
    model = settings.create("repvgg_a0", reserve_ratio=ratio)
    trained, variables = residual(label.replace("deploy", "training form"), model, settings)
    dense = dataclasses.replace(settings, modes=("dense",))
    (plain,) = plain_forms(label, trained, model, variables, dense)
    role = "plain" if nets else "baseline"
    nets.append(dataclasses.replace(plain, name=label, group="RepVGG-A0", role=role))
  return nets


def resnet34(settings: Settings) -> list[Network]:
  """Table 3 sets ResNet-34 beside RMNeXt-26x3_32 on CIFAR; its RM plain form, RMNet-34, is what
  rmjax deploys of it (the serving tables compare it with ResNet-34's PyTorch twin)."""
  return rm_pair("resnet34", "ResNet-34", "RMNet-34")(settings)


def tiny_resnet(settings: Settings | None = None) -> ResNet:
  """Two basic blocks of 8 and 16 channels: the architecture of `bench.py --quick` (CI)."""
  cifar = settings is None or settings.cifar
  return ResNet(
    stage_sizes=(1, 1),
    widths=(8, 16),
    strides=(1, 2),
    stem_width=8,
    stem="cifar" if cifar else "imagenet",
    num_classes=10,
  )


# Table 3's ImageNet speed column (imgs/s, V100, batch 128, 224x224) for the networks of the
# `imagenet` suite: by group (the residual label), the role of the rows it describes (the
# paper's RMNet rows are plain networks) and the number.
PAPER_IMAGENET = {
  "ResNet-50": ("baseline", 1252.1),
  "RMNeXt-41x4_8": ("plain", 1460.4),
  "RMNeXt-41x5_16": ("plain", 1185.8),
  "ResNet-101": ("baseline", 729.9),
  "RMNeXt-50x5_32": ("plain", 849.8),
  "ResNet-152": ("baseline", 512.8),
  "RMNeXt-50x6_32": ("plain", 713.8),
  "RMNeXt-101x6_16": ("plain", 461.5),
}
PAPER_BASELINE = "ResNet-50"  # what Table 3's ratios are taken to


def _rmnext(preset: str):
  label = "RMNeXt-" + preset.removeprefix("rmnext")
  return rm_pair(preset, label, f"{label} plain", imagenet=True)


# Each ImageNet group is a suite of its own (bench.py --suites=resnet50,rmnext50x6_32), and
# `imagenet` all of them, ResNet-50 (the baseline of Table 3's ratios) first, the deepest last.
IMAGENET = {
  "resnet50": rm_pair("resnet50", "ResNet-50", "RMNet-50", imagenet=True),
  "rmnext41x4_8": _rmnext("rmnext41x4_8"),
  "rmnext41x5_16": _rmnext("rmnext41x5_16"),
  "rmnext50x5_32": _rmnext("rmnext50x5_32"),
  "rmnext50x6_32": _rmnext("rmnext50x6_32"),
  "resnet101": rm_pair("resnet101", "ResNet-101", None, imagenet=True),
  "resnet152": rm_pair("resnet152", "ResNet-152", None, imagenet=True),
  "rmnext101x6_16": _rmnext("rmnext101x6_16"),
}


def imagenet(settings: Settings) -> list[Network]:
  return [net for build_suite in IMAGENET.values() for net in build_suite(settings)]


def tiny(settings: Settings) -> list[Network]:
  model = tiny_resnet(settings)
  net, variables = residual("tiny ResNet", model, settings)
  return [net, *plain_forms("tiny RMNet", net, model, variables, settings)]


SUITES: dict[str, Callable[[Settings], list[Network]]] = {
  "resnet18": rm_pair("resnet18", "ResNet-18", "RMNet-18"),
  # Table 2: the re-designed MobileNetV2; RM + fusion of it is MobileNetV1.
  "mobilenet": rm_pair("mobilenetv2_to_v1", "MobileNetV2 (re-designed)", "RMNetV1 = MobileNetV1"),
  "repvgg": repvgg,
  "rmnext26": rm_pair("rmnext26x3_32", "RMNeXt-26x3_32 (residual)", "RMNeXt-26x3_32 plain"),
  "resnet34": resnet34,
  "tiny": tiny,
  **IMAGENET,
  "imagenet": imagenet,
}
DEFAULT_SUITES = ("resnet18", "mobilenet", "repvgg", "rmnext26", "resnet34")


def build(
  suites: Sequence[str],
  settings: Settings = Settings(),
  progress: Callable[[str], None] = lambda message: None,
) -> list[Network]:
  """The networks of `suites` (names in SUITES), in order: random variables, converted."""
  unknown = [s for s in suites if s not in SUITES]
  if unknown:
    raise ValueError(f"unknown suite(s) {unknown}; known: {', '.join(SUITES)}")
  bad_modes = [m for m in settings.modes if m not in PLAIN_MODES]
  if bad_modes:
    raise ValueError(f"unknown plain mode(s) {bad_modes}; known: {', '.join(PLAIN_MODES)}")
  networks = []
  for name in suites:
    start = time.perf_counter()
    built = SUITES[name](settings)
    progress(f"built {name} in {time.perf_counter() - start:.1f}s: {[n.name for n in built]}")
    networks += built
  return networks


def select(networks: Sequence[Network], names: Sequence[str] | None) -> list[Network]:
  """The networks named in `names` (all if None), in order; a name of none is a ValueError."""
  if names is None:
    return list(networks)
  unknown = sorted(set(names) - {n.name for n in networks})
  if unknown:
    raise ValueError(
      f"no network(s) {unknown} in the suites; they have: {[n.name for n in networks]}"
    )
  return [n for n in networks if n.name in names]
