"""A training run on disk, or imported weights, as what convert and evaluate work on.

A run's workdir (written by `train.py`) holds `config.json` (the config, which builds the model)
and `checkpoints/<step>/` (orbax). Loading one needs neither the training loop nor its data:

  >>> run = load_run("workdirs/demo")                  # the latest checkpoint
  >>> run.model, run.variables, run.input_shape
  >>> run = load_imported("resnet50.pth", torch_arch="resnet50")   # foreign weights

Every failure is a `RunError` (a ValueError) whose message is for the user.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections

from rmjax import checkpoint, data, integrity, interop, models, plain_io, transforms
from rmjax.models.plain import Conv, PlainNet


class RunError(ValueError):
  """A run, checkpoint or weight file that cannot be used, with the reason in words."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One checkpoint of a training run (or imported weights), ready to convert or evaluate."""

  workdir: str  # imported weights: the weight file
  step: int | None
  config: Any  # ml_collections.ConfigDict, as saved in the workdir's config.json; None if imported
  model: Any
  variables: dict
  input_shape: tuple[int, int, int]
  origin: dict | None = None  # imported weights: where from (plain.json's `source`)

  @property
  def name(self) -> str:
    """The architecture's name, for messages."""
    return self.origin["model"] if self.origin else self.config.model

  def provenance(self) -> dict[str, Any]:
    """Where the network came from, for plain.json's `source`."""
    if self.origin:
      return dict(self.origin)
    return {
      "workdir": self.workdir,
      "step": self.step,
      "model": self.config.model,
      "dataset": self.config.dataset,
      "config": self.config.to_dict(),
    }


def resolve_checkpoint(path: str) -> tuple[str, int | None]:
  """`(workdir, step)` for a training workdir (step None = latest) or one of its step dirs."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise RunError(f"{path} does not exist: give a workdir written by train.py")
  if not os.path.isdir(path):
    raise RunError(f"{path} is a file; give a workdir written by train.py")
  if os.path.exists(os.path.join(path, "config.json")):
    return path, None
  parent = os.path.dirname(path)  # <workdir>/checkpoints/<step>
  workdir = os.path.dirname(parent)
  name = os.path.basename(path)
  if os.path.basename(parent) == "checkpoints" and name.isdigit():
    if os.path.exists(os.path.join(workdir, "config.json")):
      return workdir, int(name)
  raise RunError(
    f"{path} is not a training workdir (no config.json) nor a step directory "
    "<workdir>/checkpoints/<step> of one"
  )


def load_run(path: str) -> Run:
  """The config, model and variables (params + batch_stats) of the checkpoint at `path`."""
  workdir, step = resolve_checkpoint(path)
  try:
    config = load_config_json(workdir)
  except (OSError, ValueError) as e:
    raise RunError(f"{workdir}/config.json cannot be read: {e}") from None
  try:
    info = data.dataset_info(config.dataset)
    model = create_model(config, info.num_classes)
  except (ValueError, KeyError, AttributeError) as e:
    raise RunError(f"the config saved in {workdir} does not build a model: {e}") from None
  step, variables = _restore_variables(workdir, step)
  try:
    transforms.check_variables(model, variables)
  except ValueError as e:
    raise RunError(
      f"the checkpoint of step {step} does not match the model its config describes "
      f"({config.model}): {e}"
    ) from None
  try:
    integrity.check_finite(variables, f"the checkpoint {workdir}/checkpoints/{step}")
  except integrity.NonFiniteError as e:
    raise RunError(str(e)) from None
  size = config.get("image_size") or info.image_size
  return Run(workdir, step, config, model, variables, (size, size, info.channels))


def _restore_variables(workdir: str, step: int | None) -> tuple[int, dict]:
  """`(step, {"params", "batch_stats"})` of the checkpoint at `step` (None: the latest), on one
  device whatever devices saved it, checked against its digest."""
  mngr = checkpoint.manager(workdir, create=False)  # reading creates nothing in the workdir
  try:
    steps = mngr.all_steps()
    if not steps:
      raise RunError(f"{workdir} has no checkpoint yet (no {workdir}/checkpoints/<step>/)")
    step = max(steps) if step is None else step
    if step not in steps:
      raise RunError(f"{workdir} has no complete checkpoint of step {step}; it has {steps}")
    try:
      # The raw arrays, then checked against the model (check_variables names paths).
      state = checkpoint.restore_on_one_device(mngr, step)
    except checkpoint.CheckpointError as e:
      raise RunError(str(e)) from None
  finally:
    mngr.close()
  if not isinstance(state, dict) or "params" not in state:
    raise RunError(f"the checkpoint {workdir}/checkpoints/{step} holds no params")
  return step, {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}


def load_imported(
  weights: str, *, torch_arch: str | None = None, input_size: int | None = None
) -> Run:
  """A `Run` of imported weights: PyTorch ones with `torch_arch` (torchvision's ResNet or
  MobileNetV2, or another code base's `CODE:ARCH`, `interop.TORCH_LAYOUTS`), else a Keras
  MobileNetV2 (.h5/.keras). The check batch has `input_size` square
  images (default: the Keras file's input shape, else 224)."""
  path = os.path.abspath(weights)
  try:
    if torch_arch is not None:
      imported, framework = interop.import_torch(torch_arch, path), "torch"
    else:
      imported, framework = interop.import_keras(path), "keras"
  except interop.WeightImportError as e:
    raise RunError(str(e)) from None
  try:
    integrity.check_finite(imported.variables, path)
  except integrity.NonFiniteError as e:
    raise RunError(str(e)) from None
  if input_size is not None:
    if input_size < 32:
      raise RunError(f"--input_size must be at least 32 (the networks' stride), got {input_size}")
    shape = (input_size, input_size, 3)
  else:
    shape = imported.input_shape or (224, 224, 3)
  origin = {
    "imported_from": path,
    "framework": framework,
    "model": imported.name,
    "num_classes": _num_classes(imported.model),
    "dataset": None,
    "notes": list(imported.notes),
  }
  return Run(path, None, None, imported.model, imported.variables, shape, origin)


def _num_classes(model) -> int | None:
  # A deploy-time layout imports as a plain network: its classes are its last layer's outputs.
  if isinstance(model, PlainNet):
    return getattr(model.layers[-1], "out_features", None) if model.layers else None
  return model.num_classes


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  """The config's model; `config.model_kwargs` are passed on (e.g. `stem`).

  With `config.init_from` (a PLAIN directory), the `PlainNet` of its plain.json instead:
  `config.model` and `config.model_kwargs` are then ignored.
  """
  if config.get("init_from"):
    return plain_architecture(config.init_from)[0]
  kwargs = dict(config.get("model_kwargs", {}) or {})
  # A config read back from JSON has (nested) lists; architectures are hashable (static under
  # jit), so every list becomes a tuple.
  kwargs = {k: _tuples(v) for k, v in kwargs.items()}
  return models.create(config.model, num_classes=num_classes, **kwargs)


def _tuples(value):
  if isinstance(value, list | tuple):
    return tuple(_tuples(v) for v in value)
  return value


def plain_architecture(path: str) -> tuple[PlainNet, tuple[int, ...]]:
  """The `PlainNet` and input shape that a PLAIN directory's plain.json records (no weights read),
  without its convs' record of Dirac structure: training fills those zeros in, so evaluating
  (or converting) a checkpoint of the run must not skip them (`PlainNet`'s `structured=None`).

  Raises:
    PlainFormatError (a ValueError): `path` is missing or not a PLAIN directory.
  """
  try:
    arch = plain_io.read_arch(path)
    plain = plain_io.plain_from_arch(arch)
  except plain_io.PlainFormatError as e:
    raise plain_io.PlainFormatError(f"config.init_from: {e}") from None
  layers = tuple(x.unstructured() if isinstance(x, Conv) else x for x in plain.layers)
  plain = PlainNet(layers, taps=plain.taps)
  return plain, tuple(arch["input_shape"])


def load_config_json(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in its workdir."""
  with open(os.path.join(workdir, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))
