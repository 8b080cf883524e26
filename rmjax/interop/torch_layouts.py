"""`from_torch`: PyTorch checkpoints by name, in torchvision's key layout or another code base's.

A plain name (`resnet50`, `mobilenet_v2`) is torchvision's (`rmjax.interop.torchvision_weights`).
`CODE:ARCH` names another code base's layout: CODE is the code base whose modules named the keys,
ARCH the rmjax architecture the weights become (`rmjax.models.names()`), or that code base's
own name for it:

  rmnet:  the published RMNet code (github.com/fxmeng/RMNet): `rmnet:resnet18` (= `rmnet:rmnet18`),
          `rmnet:rmnext50x6_32` (= `rmnet:rmnext50_64x6_g32`), `rmnet:mobilenetv2`
          (= `rmnet:mobilenetv2_imagenet`), `rmnet:mobilenetv1_cifar`, ...
          (`rmjax.interop.rmnet_weights`)
  repvgg: the RepVGG code (github.com/DingXiaoH/RepVGG): `repvgg:repvgg_a0` (= `repvgg:RepVGG-A0`)
  timm:   timm's RepVGG (`byobnet.py`): `timm:repvgg_a0` ... `timm:repvgg_b3g4`
          (both `rmjax.interop.repvgg_weights`)

Train-time and deploy-time files are told apart by their keys. A deploy-time file is already a
plain network and imports as a `PlainNet` with its variables.

  >>> model, variables = from_torch("timm:repvgg_a0", "repvgg_a0.safetensors")
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import numpy as np

from rmjax.interop import repvgg_weights, rmnet_weights, torchvision_weights
from rmjax.interop.torchvision_weights import load_state_dict
from rmjax.interop.weights import Imported, WeightImportError


@dataclasses.dataclass(frozen=True)
class CodeBase:
  """What `from_torch` imports from one code base: its architectures (rmjax names), its own
  names for them, names it refuses (with why), and the importer `load(arch, weights, source)`."""

  description: str
  architectures: tuple[str, ...]
  aliases: Mapping[str, str]
  unsupported: Mapping[str, str]
  load: Callable[[str, Mapping[str, np.ndarray], str], Imported]


CODE_BASES = {
  "rmnet": CodeBase(
    "the published RMNet code (github.com/fxmeng/RMNet)",
    rmnet_weights.ARCHITECTURES,
    rmnet_weights.ALIASES,
    rmnet_weights.UNSUPPORTED,
    rmnet_weights.import_rmnet,
  ),
  "repvgg": CodeBase(
    "the RepVGG code (github.com/DingXiaoH/RepVGG)",
    repvgg_weights.ARCHITECTURES,
    repvgg_weights.DING_ALIASES,
    repvgg_weights.DING_UNSUPPORTED,
    functools.partial(repvgg_weights.import_repvgg, repvgg_weights.DING),
  ),
  "timm": CodeBase(
    "timm's RepVGG (timm/models/byobnet.py)",
    repvgg_weights.ARCHITECTURES,
    {},
    repvgg_weights.TIMM_UNSUPPORTED,
    functools.partial(repvgg_weights.import_repvgg, repvgg_weights.TIMM),
  ),
}

# Every `CODE:ARCH` name, with rmjax's ARCH names (the code bases' own are accepted too).
LAYOUTS = tuple(
  f"{code}:{arch}" for code, base in CODE_BASES.items() for arch in base.architectures
)


def from_torch(name: str, state_dict) -> tuple:
  """`(model, variables)` for the network `name` with the weights of `state_dict`.

  Args:
    name: torchvision's (`resnet18` ... `resnet152`, `mobilenet_v2`) or `CODE:ARCH` (LAYOUTS;
      see the module docstring). A deploy-time `CODE:ARCH` file gives a `PlainNet`.
    state_dict: `model.state_dict()` (torch tensors or NumPy arrays), the module itself, or the
      path of a `.pth`/`.pt` file holding one (read with `weights_only=True`) or of a
      `.safetensors` file. A `{"state_dict": ...}` wrapper and DataParallel's `module.` prefix
      are undone.

  Raises:
    WeightImportError (a ValueError): an unknown name, an unreadable file, or weights that
      do not fit — every missing key, wrong shape and unexpected key named at once.

  Example:
    >>> model, variables = from_torch("rmnet:resnet18", "rmnet18.pth")
    >>> plain, plain_vars = rmjax.transforms.rm_convert(model, variables)
  """
  imported = import_torch(name, state_dict)
  return imported.model, imported.variables


def import_torch(name: str, state_dict) -> Imported:
  """`from_torch`, as an `Imported` (what the CLI uses)."""
  if ":" not in name:
    try:
      return torchvision_weights.import_torch(name, state_dict)
    except WeightImportError as e:
      # Not torchvision's (or not fitting it): perhaps another code base's network by that name.
      hints = [] if name in torchvision_weights.ARCHITECTURES else _layouts_named(name)
      if not hints:
        raise
      raise WeightImportError(f"{e}\n(other code bases' layouts: {', '.join(hints)})") from None
  base, arch = resolve(name)  # before any file is read
  weights, source = load_state_dict(state_dict)
  return base.load(arch, weights, source)


def _layouts_named(arch: str) -> list[str]:
  """The `CODE:ARCH` names whose ARCH, or the code base's own name for it, is `arch`."""
  return [
    f"{code}:{arch}"
    for code, base in CODE_BASES.items()
    if arch in base.architectures or arch in base.aliases
  ]


def resolve(name: str) -> tuple[CodeBase, str]:
  """`(code base, rmjax architecture)` of a `CODE:ARCH` name.

  Raises:
    WeightImportError: an unknown code base or architecture; the message lists the known ones.
  """
  code, _, arch = name.partition(":")
  base = CODE_BASES.get(code)
  if base is None:
    raise WeightImportError(
      f"unknown code base {code!r} in {name!r}; known: {', '.join(CODE_BASES)} "
      "(CODE:ARCH, e.g. rmnet:resnet18, repvgg:repvgg_a0, timm:repvgg_a0)"
    )
  arch = base.aliases.get(arch, arch)
  if arch in base.architectures:
    return base, arch
  supported = ", ".join(f"{code}:{a}" for a in base.architectures)
  if arch in base.unsupported:
    raise WeightImportError(
      f"{name} is not supported: {base.unsupported[arch]}; supported from "
      f"{base.description}: {supported}"
    )
  own = f" (or its own names: {', '.join(base.aliases)})" if base.aliases else ""
  raise WeightImportError(
    f"unknown architecture {arch!r} of {base.description}; supported: {supported}{own}"
  )
