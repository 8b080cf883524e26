"""What the benchmark measures: suites of `Network`s, residual networks beside their plain forms.

A `Network` is a name, an apply function and its variables. A suite builds the networks of one
comparison (a group): a baseline — the residual network, or RepVGG — and the plain networks
converted by RM, once per execution mode of `PLAIN_MODES`. Another implementation of plain
networks is another entry of `PLAIN_MODES`; another framework or architecture, another suite.

  >>> nets = build(["resnet18"], Settings(modes=("dense", "structured")))
  >>> [n.name for n in nets]
  ['ResNet-18', 'RMNet-18 (dense)', 'RMNet-18 (structured)']
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
from rmjax.models.structured import check_structure
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


# How a PlainNet runs, by name (bench.py --modes). "dense" is the canonical form; "structured"
# skips the Dirac zeros that RM adds (rmjax.models.structured).
PLAIN_MODES: dict[str, Callable[[PlainNet], Callable]] = {
  "dense": lambda plain: plain.apply,
  "structured": lambda plain: functools.partial(plain.apply, structured=True),
}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every suite builds for: image size (<= 64: CIFAR stems and 10 classes, else ImageNet
  stems and 1000 classes), plain execution modes, dtype of variables (and inputs), seed."""

  image_size: int = 32
  modes: tuple[str, ...] = ("dense", "structured")
  dtype: str = "float32"
  seed: int = 0

  @property
  def cifar(self) -> bool:
    return self.image_size <= 64

  def create(self, name: str, **kwargs):
    stem = "cifar" if self.cifar else "imagenet"
    return models.create(name, num_classes=10 if self.cifar else 1000, stem=stem, **kwargs)


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
  """`rm_convert(model, variables)` run in each of `settings.modes` — "structured" only where
  the conversion recorded Dirac structure to skip — in `source`'s group."""
  plain, plain_vars = jax.jit(transforms.rm_convert, static_argnums=0)(model, variables)
  problems = check_structure(plain, plain_vars)
  if problems:
    raise AssertionError("converted kernels lack their recorded structure:\n" + "\n".join(problems))
  structured = any(getattr(layer, "structured", False) for layer in plain.layers)
  plain_vars = cast(plain_vars, settings.dtype)
  return [
    Network(
      f"{label} ({mode})",
      source.group,
      "plain",
      PLAIN_MODES[mode](plain),
      plain_vars,
      settings.image_size,
      mode=mode,
      reference=source,
      model=plain,
    )
    for mode in settings.modes
    if mode != "structured" or structured
  ]


def rm_pair(model_name: str, residual_label: str, plain_label: str, **model_kwargs):
  """A suite: a residual network and its RM plain form in every mode."""

  def build_suite(settings: Settings) -> list[Network]:
    model = settings.create(model_name, **model_kwargs)
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
  """Table 3 sets ResNet-34 beside RMNeXt-26x3_32 on CIFAR: the residual network only."""
  return [residual("ResNet-34", settings.create("resnet34"), settings)[0]]


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
