"""PyTorch weights in torchvision's layout -> rmjax: ResNet-18/34/50/101/152 and MobileNetV2.

  >>> model, variables = from_torch("resnet50", "resnet50.pth")   # or .safetensors, or a dict
  >>> logits = model.apply(variables, x_nhwc, train=False)        # torch's logits on NCHW x

rmjax's ResNet and MobileNetV2 are torchvision's networks layer for layer (stride on the
bottleneck's 3x3 conv, 1x1 conv + BN projection, padding k // 2, ReLU6, BN epsilon 1e-5), so
the import only renames and transposes: conv weights OIHW -> HWIO, Linear (out, in) ->
(in, out), BN weight/bias/running_mean/running_var -> scale/bias/mean/var. The class count (and
MobileNetV2's width multiplier) is read off the shapes.

Files are read with `torch.load(weights_only=True)` (no code runs) or `safetensors.numpy`;
torch is needed only for `.pth`/`.pt` files (`pip install 'rmjax[interop]'`).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping

import numpy as np

from rmjax import models
from rmjax.interop.weights import (
  LINEAR,
  OIHW,
  SAME,
  Imported,
  Layout,
  WeightImportError,
  error_text,
  first_line,
  gather,
  mobilenetv2_name,
  to_numpy,
)
from rmjax.models.mobilenet import MobileNetV2, mobilenetv2, mobilenetv2_from_widths

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
ARCHITECTURES = (*RESNETS, "mobilenet_v2")
_ALIASES = {"mobilenetv2": "mobilenet_v2"}
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def from_torch(name: str, state_dict) -> tuple:
  """`(model, variables)` for torchvision's `name` with the weights of `state_dict`.

  Args:
    name: one of ARCHITECTURES (torchvision's names; `mobilenetv2` works too).
    state_dict: `model.state_dict()` (torch tensors or NumPy arrays; the module itself
      works too), or the path of a
      `.pth`/`.pt` file holding one (read with `weights_only=True`) or of a `.safetensors`
      file. A `{"state_dict": ...}` wrapper and DataParallel's `module.` prefix are undone.

  Raises:
    WeightImportError (a ValueError): an unknown name, an unreadable file, or weights that
      do not fit — every missing key, wrong shape and unexpected key named at once.

  Example:
    >>> model, variables = from_torch("mobilenet_v2", torch_model.state_dict())
  """
  imported = import_torch(name, state_dict)
  return imported.model, imported.variables


def import_torch(name: str, state_dict) -> Imported:
  """`from_torch`, as an `Imported` (what the CLI uses)."""
  arch = _ALIASES.get(name, name)
  if arch not in ARCHITECTURES:
    raise WeightImportError(
      f"unknown torchvision architecture {name!r}; supported: {', '.join(ARCHITECTURES)}"
    )
  weights, source = load_state_dict(state_dict)
  if arch in RESNETS:
    fc = weights.get("fc.weight")
    classes = fc.shape[0] if fc is not None and fc.ndim == 2 else 1000
    model = models.create(arch, num_classes=classes, stem="imagenet")
    rule, name = _resnet_rule, f"{arch} (torchvision)"
  else:
    model = _mobilenetv2(weights)
    rule, name = functools.partial(_mobilenet_rule, model), mobilenetv2_name(model, "torchvision")
  variables = gather(
    model, weights, rule, source=source, ignore=lambda key: key.endswith("num_batches_tracked")
  )
  return Imported(model, variables, name)


# --- reading ----------------------------------------------------------------------------------


def load_state_dict(state_dict) -> tuple[dict[str, np.ndarray], str]:
  """`(key -> NumPy array, a name for messages)` from a state dict or a weight file."""
  if callable(getattr(state_dict, "state_dict", None)):  # a torch.nn.Module
    state_dict = state_dict.state_dict()
  if isinstance(state_dict, str | os.PathLike):
    source = os.fspath(state_dict)
    loaded = _read_file(source)
  elif isinstance(state_dict, Mapping):
    source, loaded = "the state dict", state_dict
  else:
    raise WeightImportError(
      "expected a state dict (names -> tensors or arrays) or the path of a .pth, .pt or "
      f".safetensors file, got {type(state_dict).__name__}"
    )
  if not isinstance(loaded, Mapping):
    raise WeightImportError(f"{source} holds a {type(loaded).__name__}, not a state dict")
  # Training scripts often save {"state_dict": ..., "epoch": ...}.
  for wrapper in ("state_dict", "model"):
    if isinstance(loaded.get(wrapper), Mapping):
      loaded = loaded[wrapper]
      break
  keys = [str(k) for k in loaded]
  strip = "module." if keys and all(k.startswith("module.") for k in keys) else ""
  weights, problems = {}, []
  for key, value in loaded.items():
    try:
      weights[str(key)[len(strip) :]] = to_numpy(value)
    except (TypeError, ValueError, RuntimeError):
      problems.append(f"{key} is a {type(value).__name__}, not an array")
  if problems:
    raise WeightImportError(f"{source} is not a state dict:\n  " + "\n  ".join(problems))
  return weights, source


def _read_file(path: str):
  if not os.path.exists(path):
    raise WeightImportError(f"{path} does not exist")
  if not os.path.isfile(path):
    raise WeightImportError(f"{path} is not a file")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    try:
      from safetensors.numpy import load_file
    except ImportError:
      raise WeightImportError(
        f"reading {path} needs the safetensors package: pip install 'rmjax[interop]'"
      ) from None
    try:
      return load_file(path)
    except Exception as e:  # safetensors raises its own error types
      raise WeightImportError(
        f"{path} cannot be read as safetensors (corrupt or truncated?): {first_line(e)}"
      ) from None
  # `.pth.tar`: what the RMNet code's train.py saves (torch.save's format, a zip).
  if ext in (".pth", ".pt", ".bin") or path.lower().endswith(".pth.tar"):
    try:
      import torch
    except ImportError:
      raise WeightImportError(
        f"reading {path} needs PyTorch: pip install 'rmjax[interop]'"
      ) from None
    try:
      return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike
      raise WeightImportError(_torch_load_failure(path, e)) from None
  raise WeightImportError(
    f"{path}: unknown weight file type {ext!r}; expected .pth, .pt or .safetensors"
  )


def _torch_load_failure(path: str, error: Exception) -> str:
  """Why torch.load refused `path`, in rmjax's terms: torch's own text offers options (and
  terminal escapes) for its Python API, not for this command line."""
  refused = re.search(r"WeightsUnpickler error: (.*?)(?:\.\s|\.?$)", error_text(error), re.M)
  if not refused:
    return (
      f"{path} cannot be read by torch.load(weights_only=True) (corrupt or truncated?): "
      f"{first_line(error)}"
    )
  return (
    f"{path} holds pickled Python objects, not only tensors ({refused.group(1)}), and rmjax reads "
    ".pth files with torch.load(weights_only=True), which runs no code from the file. If you "
    "trust the file, save its weights alone and convert that: in Python, "
    f"`torch.save(torch.load({path!r}, weights_only=False).state_dict(), 'weights.pth')` for a "
    "whole model, or save the state dict the object holds"
  )


# --- names ------------------------------------------------------------------------------------


def _leaf(module: str, leaf: str, *, linear: bool = False) -> tuple[str, Layout]:
  if leaf == "kernel":
    return f"{module}.weight", LINEAR if linear else OIHW
  if leaf == "bias" and linear:
    return f"{module}.bias", SAME
  return f"{module}.{_BN[leaf]}", SAME


def _resnet_rule(path: tuple[str, ...]) -> tuple[str, Layout]:
  # ("params", "layer2_0", "proj_conv", "kernel") -> "layer2.0.downsample.0.weight"
  _, block, layer, leaf = path
  if block == "head":
    return _leaf("fc", leaf, linear=True)
  if block == "stem":
    return _leaf({"conv": "conv1", "bn": "bn1"}[layer], leaf)
  stage, index = block.split("_")
  layer = {"proj_conv": "downsample.0", "proj_bn": "downsample.1"}.get(layer, layer)
  return _leaf(f"{stage}.{index}.{layer}", leaf)


# torchvision's InvertedResidual is one Sequential `conv`: [expand ConvBNReLU6], depthwise
# ConvBNReLU6, project conv, project BN.
_EXPANDING = {
  "expand": "conv.0.0",
  "expand_bn": "conv.0.1",
  "depthwise": "conv.1.0",
  "depthwise_bn": "conv.1.1",
  "project": "conv.2",
  "project_bn": "conv.3",
}
_NOT_EXPANDING = {
  "depthwise": "conv.0.0",
  "depthwise_bn": "conv.0.1",
  "project": "conv.1",
  "project_bn": "conv.2",
}


def _mobilenet_rule(model: MobileNetV2, path: tuple[str, ...]) -> tuple[str, Layout]:
  _, block, layer, leaf = path
  if block == "head":
    return _leaf("classifier.1", leaf, linear=True)
  if block in ("stem", "last"):
    index = 0 if block == "stem" else len(model.blocks) + 1
    return _leaf(f"features.{index}.{'0' if layer == 'conv' else '1'}", leaf)
  k = int(block.removeprefix("block"))
  names = _EXPANDING if model.blocks[k - 1].hidden else _NOT_EXPANDING
  return _leaf(f"features.{k}.{names[layer]}", leaf)


def _mobilenetv2(weights) -> MobileNetV2:
  """The MobileNetV2 whose widths the weights have (torchvision's where a key is missing, so
  that `gather` names it)."""
  default = mobilenetv2()

  def width(key, axis, fallback):
    array = weights.get(key)
    return int(array.shape[axis]) if array is not None and array.ndim > axis else fallback

  blocks = []
  for k, spec in enumerate(default.blocks, start=1):
    present = any(key.startswith(f"features.{k}.conv.") for key in weights)
    # Only an expanding block has a fourth entry (the project BN) in its `conv` Sequential.
    expands = f"features.{k}.conv.3.weight" in weights if present else bool(spec.hidden)
    hidden = width(f"features.{k}.conv.0.0.weight", 0, spec.hidden) if expands else 0
    out = width(f"features.{k}.conv.{2 if expands else 1}.weight", 0, spec.out)
    blocks.append((hidden, out))
  n = len(default.blocks)
  return mobilenetv2_from_widths(
    width("features.0.0.weight", 0, default.stem_features),
    blocks,
    width(f"features.{n + 1}.0.weight", 0, default.last_features),
    num_classes=width("classifier.1.weight", 0, 1000),
    stem="imagenet",
    activation="relu6",
  )
