"""A Keras MobileNetV2 (`keras.applications.MobileNetV2`) -> rmjax, read from its HDF5 directly.

  >>> model, variables = from_keras("mobilenet_v2.keras")   # or .h5
  >>> logits = model.apply(variables, x, train=False)       # Keras' logits (before any softmax)

Beyond renaming, three things must match Keras exactly: BN epsilon 1e-3 (read from the file),
ReLU6, and TensorFlow's "SAME" padding of every stride-2 3x3 conv (the stem's `padding="same"`,
the blocks' `ZeroPadding2D`), which depends on the size it sees: (0, 1) on even sizes, (1, 1)
on odd ones. That is `mobilenetv2(padding="keras")`, computed from the input's size when
applied, so the import is what Keras' MobileNetV2 built for that size computes, at every size.
A model Keras built without a fixed size (`input_shape=(None, None, 3)`) froze its blocks'
`ZeroPadding2D` at (0, 1) instead: `padding="keras_unsized"`, read off its input layer. Depthwise
kernels are (3, 3, C, 1) in Keras and (3, 3, 1, C) in Flax. Width multiplier, head width and
class count come from the shapes, so `alpha`, `classes` and a custom head all import: the model
may be `MobileNetV2(include_top=True, classes=N)`, or an `include_top=False, pooling="avg"` base
followed by (Dropout and) one Dense layer.

Two file formats, both HDF5 underneath (h5py only; neither Keras nor TensorFlow is imported):
  .h5      Keras 2, or Keras 3's legacy `model.save("x.h5")`: weights stored under layer names;
  .keras   Keras 3: a zip of config.json and model.weights.h5, whose groups are named by class
           (`layers/batch_normalization_17/vars/0`) and carry the layer name as an attribute
           (older Keras 3 files without it are matched through config.json's layer order).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import zipfile
from typing import Any

import numpy as np

from rmjax.interop.weights import (
  SAME,
  Imported,
  Layout,
  WeightImportError,
  first_line,
  gather,
  mobilenetv2_name,
)
from rmjax.models.mobilenet import MobileNetV2, mobilenetv2, mobilenetv2_from_widths

KERAS_BN_EPSILON = 1e-3
KERAS_DEPTHWISE = Layout((0, 1, 3, 2))  # (3, 3, C, 1) -> (3, 3, 1, C)
_BN = {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"}
# Layers a Keras MobileNetV2 (with its own or a user's one-Dense head) is made of.
_SUPPORTED = {
  "InputLayer",
  "Conv2D",
  "DepthwiseConv2D",
  "BatchNormalization",
  "ReLU",
  "ZeroPadding2D",
  "Add",
  "GlobalAveragePooling2D",
  "Dropout",
  "Dense",
}


@dataclasses.dataclass(frozen=True)
class KerasFile:
  """What a Keras file holds: weights as `"layer/kind" -> array`, the layers' configs (nested
  models flattened; empty when the file has no config), and the input shape if fixed."""

  path: str
  weights: dict[str, np.ndarray]
  layers: list[dict[str, Any]]
  input_shape: tuple[int, int, int] | None


def from_keras(path: str) -> tuple:
  """`(model, variables)` for the Keras MobileNetV2 saved at `path` (.h5 or .keras).

  The rmjax model is `mobilenetv2(width=alpha, num_classes=classes, bn_epsilon=1e-3,
  padding="keras")` with the file's widths (`"keras_unsized"` for a model built without a fixed
  input size); it takes any input size of at least 32, as a Keras MobileNetV2 built for that
  size does; its output is the classifier's logits (a softmax
  the Keras model ends with is left out: same argmax, apply `jax.nn.softmax` for
  probabilities). Inputs are what the Keras model takes (`preprocess_input`: [-1, 1]).

  Raises:
    WeightImportError (a ValueError): an unreadable file, an unsupported layer, or weights that
      do not fit — every problem named at once.

  Example:
    >>> model, variables = from_keras("mobilenet_v2.h5")
    >>> plain, plain_vars = rmjax.transforms.rm_convert(model, variables)
  """
  imported = import_keras(path)
  return imported.model, imported.variables


def import_keras(path: str) -> Imported:
  """`from_keras`, as an `Imported` with the file's input shape (what the CLI uses)."""
  f = read_keras(path)
  problems, notes = _check_layers(f.layers)
  dense = _classifier(f, problems)
  epsilons = {
    float(x["config"].get("epsilon", KERAS_BN_EPSILON)) for x in _layers_of(f, "BatchNormalization")
  }
  if len(epsilons) > 1:
    problems.append(f"BatchNormalization layers with different epsilons {sorted(epsilons)}")
  epsilon = epsilons.pop() if len(epsilons) == 1 else KERAS_BN_EPSILON
  model = _mobilenetv2(f.weights, dense, epsilon, _padding(f.layers))
  variables = gather(
    model,
    f.weights,
    lambda path: _rule(dense, path),
    source=path,
    problems=problems,
  )
  name = mobilenetv2_name(model, "Keras")
  return Imported(model, variables, name, f.input_shape, tuple(notes))


# --- reading ----------------------------------------------------------------------------------


def read_keras(path: str) -> KerasFile:
  """The weights, layer configs and input shape of a `.keras` or `.h5` Keras model file."""
  try:
    import h5py
  except ImportError:
    raise WeightImportError(f"reading {path} needs h5py: pip install 'rmjax[interop]'") from None
  if not os.path.exists(path):
    raise WeightImportError(f"{path} does not exist")
  if not os.path.isfile(path):
    raise WeightImportError(f"{path} is not a file")
  try:
    if zipfile.is_zipfile(path):
      return _read_keras_zip(path, h5py)
    if h5py.is_hdf5(path):
      return _read_legacy_h5(path, h5py)
  except WeightImportError:
    raise
  except Exception as e:  # zipfile, h5py and json errors alike: a damaged file
    raise WeightImportError(
      f"{path} cannot be read as a Keras model (corrupt or truncated?): {first_line(e)}"
    ) from None
  raise WeightImportError(
    f"{path} is neither a .keras archive nor an HDF5 (.h5) file: save the model with "
    "model.save('model.keras') or model.save('model.h5')"
  )


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _read_legacy_h5(path, h5py) -> KerasFile:
  with h5py.File(path, "r") as f:
    config = json.loads(_text(f.attrs["model_config"])) if "model_config" in f.attrs else {}
    group = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in group.attrs:
      raise WeightImportError(
        f"{path} is an HDF5 file but not a Keras model (no layer names; a Keras 3 "
        "`.weights.h5` file does not record them): save the whole model with "
        "model.save('model.keras')"
      )
    weights = {}
    for layer in map(_text, group.attrs["layer_names"]):
      for name in map(_text, group[layer].attrs.get("weight_names", [])):
        # "Conv1/kernel:0" (Keras 2), "Conv1/kernel" (Keras 3); nested models keep the inner
        # layer's name just before the weight's.
        parts = name.split("/")
        owner = parts[-2] if len(parts) > 1 else layer
        weights[f"{owner}/{parts[-1].split(':')[0]}"] = np.asarray(group[layer][name])
  return KerasFile(path, weights, _flat_layers(config), _input_shape(config))


def _read_keras_zip(path, h5py) -> KerasFile:
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    if "config.json" not in names or "model.weights.h5" not in names:
      raise WeightImportError(
        f"{path} is a zip file but not a Keras 3 model (no config.json and model.weights.h5)"
      )
    config = json.loads(z.read("config.json"))
    data = z.read("model.weights.h5")
  layers = _flat_layers(config)
  classes = {x["config"]["name"]: x for x in layers}
  by_path = _saved_paths(config)
  weights = {}
  with h5py.File(io.BytesIO(data), "r") as f:
    groups = []
    f.visititems(lambda name, obj: groups.append((name, obj)) if name.endswith("vars") else None)
    for name, group in groups:
      if not isinstance(group, h5py.Group) or not len(group):
        continue
      owner = _text(group.attrs["name"]) if "name" in group.attrs else None
      owner = owner or by_path.get(name.removesuffix("/vars"), name)
      kinds = _var_kinds(classes.get(owner))
      for key in sorted(group, key=int):
        kind = kinds[int(key)] if int(key) < len(kinds) else key
        weights[f"{owner}/{kind}"] = np.asarray(group[key])
  return KerasFile(path, weights, layers, _input_shape(config))


def _var_kinds(layer) -> list[str]:
  """The names of a Keras 3 layer's variables, in the order it saves them."""
  cls = layer["class_name"] if layer else ""
  if cls == "BatchNormalization":
    cfg = layer["config"]
    kinds = ["gamma"] if cfg.get("scale", True) else []
    kinds += ["beta"] if cfg.get("center", True) else []
    return kinds + ["moving_mean", "moving_variance"]
  return ["kernel", "bias"]


def _snake_case(name: str) -> str:
  # keras.src.utils.naming.to_snake_case: how Keras 3 names a layer's weight group.
  name = re.sub(r"\W+", "", name)
  name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
  return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _saved_paths(config, prefix: str = "layers") -> dict[str, str]:
  """Keras 3 weight group path -> layer name: each layer's class in snake case, numbered per
  class in the model's layer order; a nested model's layers under its own path."""
  counts: dict[str, int] = {}
  out = {}
  for layer in config.get("config", {}).get("layers", []):
    base = _snake_case(layer["class_name"])
    counts[base] = counts.get(base, -1) + 1
    path = f"{prefix}/{base}" + (f"_{counts[base]}" if counts[base] else "")
    out[path] = layer["config"]["name"]
    if "layers" in layer["config"]:
      out.update(_saved_paths(layer, f"{path}/layers"))
  return out


def _flat_layers(config) -> list[dict[str, Any]]:
  """Every layer of a (possibly nested) Functional or Sequential config, in order."""
  out = []
  for layer in config.get("config", {}).get("layers", []):
    out += _flat_layers(layer) if "layers" in layer.get("config", {}) else [layer]
  return out


def _batch_shape(input_layer) -> tuple:
  cfg = input_layer["config"]
  return tuple(cfg.get("batch_shape") or cfg.get("batch_input_shape") or ())


def _input_shape(config) -> tuple[int, int, int] | None:
  for layer in _flat_layers(config):
    if layer["class_name"] == "InputLayer":
      dims = _batch_shape(layer)[1:]
      if len(dims) == 3 and all(isinstance(d, int) for d in dims):
        return dims
      return None
  return None


def _padding(layers) -> str:
  """ "keras" (TensorFlow's "SAME" at every size), or "keras_unsized" where the MobileNetV2 was
  built without a known height: `keras.applications`' `correct_pad` then pads its blocks'
  stride-2 convs (0, 1) whatever the size. Its input layer is the last one before its first
  `ZeroPadding2D` (an outer model's comes before it); without a config, "keras"."""
  first_pad = next((i for i, x in enumerate(layers) if x["class_name"] == "ZeroPadding2D"), 0)
  inputs = [x for x in layers[:first_pad] if x["class_name"] == "InputLayer"]
  shape = _batch_shape(inputs[-1]) if inputs else ()
  return "keras_unsized" if len(shape) == 4 and shape[1] is None else "keras"


# --- checks and names -------------------------------------------------------------------------


def _layers_of(f: KerasFile, cls: str) -> list[dict[str, Any]]:
  return [x for x in f.layers if x["class_name"] == cls]


def _activation(cfg) -> str:
  act = cfg.get("activation", "linear")
  return act if isinstance(act, str) else json.dumps(act)


def _check_layers(layers) -> tuple[list[str], list[str]]:
  """Problems (layers MobileNetV2 does not have) and notes, from the file's config."""
  problems, notes = [], []
  for layer in layers:
    cls, cfg = layer["class_name"], layer["config"]
    name = cfg.get("name")
    if cls not in _SUPPORTED:
      problems.append(f"unsupported layer {name!r} ({cls}): rmjax's MobileNetV2 has none")
    elif cls == "ReLU" and (
      cfg.get("max_value") != 6 or cfg.get("negative_slope") or cfg.get("threshold")
    ):
      problems.append(f"unsupported layer {name!r}: a ReLU other than ReLU6")
    elif cls in ("Conv2D", "DepthwiseConv2D") and _activation(cfg) not in ("linear", "None"):
      problems.append(f"unsupported layer {name!r}: {cls} with activation {_activation(cfg)}")
    elif cls == "Dense" and _activation(cfg) == "softmax":
      notes.append(
        f"{name!r} ends with a softmax; the rmjax model returns the logits before it (same "
        "argmax; jax.nn.softmax gives the probabilities)"
      )
    elif cls == "Dense" and _activation(cfg) != "linear":
      problems.append(f"unsupported layer {name!r}: Dense with activation {_activation(cfg)}")
  return problems, notes


def _classifier(f: KerasFile, problems: list[str]) -> str:
  """The name of the one Dense layer (the classifier); adds to `problems` if there is not
  exactly one."""
  if f.layers:
    dense = [x["config"]["name"] for x in _layers_of(f, "Dense")]
  else:  # no config: a layer with a 2-D kernel
    dense = sorted(
      {k.split("/")[0] for k, v in f.weights.items() if k.endswith("/kernel") and np.ndim(v) == 2}
    )
  if len(dense) == 1:
    return dense[0]
  if not dense:
    problems.append(
      "no classifier: rmjax's MobileNetV2 ends with one Dense layer (include_top=True, or "
      "include_top=False, pooling='avg' followed by a Dense layer)"
    )
    return "predictions"
  problems.append(
    f"{len(dense)} Dense layers ({', '.join(dense)}): rmjax's MobileNetV2 has one classifier"
  )
  return dense[-1]


def _rule(dense: str, path: tuple[str, ...]) -> tuple[str, Layout]:
  # ("params", "block3", "depthwise_bn", "scale") -> "block_2_depthwise_BN/gamma"
  _, block, layer, leaf = path
  if block == "head":
    return f"{dense}/{leaf}", SAME
  if block in ("stem", "last"):
    name = {"stem": ("Conv1", "bn_Conv1"), "last": ("Conv_1", "Conv_1_bn")}[block]
    name = name[layer == "bn"]
  else:
    k = int(block.removeprefix("block"))
    prefix = "expanded_conv" if k == 1 else f"block_{k - 1}"
    name = f"{prefix}_{layer.removesuffix('_bn')}" + ("_BN" if layer.endswith("_bn") else "")
  if leaf == "kernel":
    return f"{name}/kernel", KERAS_DEPTHWISE if layer == "depthwise" else SAME
  return f"{name}/{_BN[leaf]}", SAME


def _mobilenetv2(weights, dense: str, epsilon: float, padding: str) -> MobileNetV2:
  """The MobileNetV2 whose widths the weights have (Keras' defaults where a weight is missing,
  so that `gather` names it)."""
  default = mobilenetv2()

  def width(key, axis, fallback):
    array = weights.get(key)
    return int(array.shape[axis]) if array is not None and np.ndim(array) > axis else fallback

  blocks = []
  for k, spec in enumerate(default.blocks, start=1):
    prefix = "expanded_conv" if k == 1 else f"block_{k - 1}"
    hidden = width(f"{prefix}_expand/kernel", 3, spec.hidden) if k > 1 else 0
    blocks.append((hidden, width(f"{prefix}_project/kernel", 3, spec.out)))
  return mobilenetv2_from_widths(
    width("Conv1/kernel", 3, default.stem_features),
    blocks,
    width("Conv_1/kernel", 3, default.last_features),
    num_classes=width(f"{dense}/kernel", 1, 1000),
    stem="imagenet",
    activation="relu6",
    bn_epsilon=epsilon,
    padding=padding,
  )
