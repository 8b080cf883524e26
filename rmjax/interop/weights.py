"""Foreign weights -> rmjax variables: one name and layout rule per rmjax path, every problem
reported at once.

The model says what it needs (its abstract `init`); a `rule(path)` says which foreign key holds
each leaf and how that array is laid out. `gather` reads them all, and raises one
`WeightImportError` naming every missing key, every wrong shape and every key left over.

  >>> variables = gather(model, state_dict, rule, source="resnet50.pth")
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from rmjax.models.mobilenet import mobilenetv2_width


class WeightImportError(ValueError):
  """Weights that cannot become the variables of an rmjax model; the message names why."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a foreign array's axes relate to rmjax's: `rmjax = foreign.transpose(axes)`."""

  axes: tuple[int, ...] | None = None

  def foreign_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    if self.axes is None:
      return tuple(shape)
    out = [0] * len(shape)
    for i, axis in enumerate(self.axes):
      out[axis] = shape[i]
    return tuple(out)

  def to_rmjax(self, array: np.ndarray) -> np.ndarray:
    return array if self.axes is None else np.transpose(array, self.axes)


SAME = Layout()
OIHW = Layout((2, 3, 1, 0))  # PyTorch conv weight (out, in, h, w) -> HWIO
LINEAR = Layout((1, 0))  # PyTorch Linear weight (out, in) -> Dense kernel (in, out)
# (name of the foreign key, its layout) for one rmjax leaf path, e.g. ("params", "stem", "conv",
# "kernel") -> ("conv1.weight", OIHW).
Rule = Callable[[tuple[str, ...]], tuple[str, Layout]]


def abstract_variables(model, in_channels: int = 3) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Every leaf path of `model`'s variables with its shape (traced, nothing computed)."""
  # Parameter shapes do not depend on the spatial size; 32x32 survives a stride-32 network.
  x = jax.ShapeDtypeStruct((1, 32, 32, in_channels), jnp.float32)
  tree = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(tree).items()}


@dataclasses.dataclass(frozen=True)
class Imported:
  """An imported network: the rmjax model, its variables, and what the file says besides."""

  model: Any
  variables: dict
  name: str  # e.g. "resnet50 (torchvision)", "mobilenetv2 width 0.35 (Keras)"
  input_shape: tuple[int, int, int] | None = None  # one input, HWC, where the file records it
  notes: tuple[str, ...] = ()  # what the user should know (e.g. a softmax left out)


def gather(
  model,
  weights: Mapping[str, np.ndarray],
  rule: Rule,
  *,
  source: str,
  ignore: Callable[[str], bool] = lambda key: False,
  problems: Sequence[str] = (),
) -> dict:
  """`model`'s variables (float32) read from `weights` through `rule`.

  Args:
    weights: foreign key -> array (already NumPy).
    rule: rmjax leaf path -> (foreign key, layout).
    source: names the weights in messages (a file name).
    ignore: keys that may be present without being used (PyTorch's `num_batches_tracked`).
    problems: ones the caller found already (unsupported layers); reported with the rest.

  Raises:
    WeightImportError: listing each missing key, each wrong shape and each unused key.
  """
  problems, used, flat, missing = list(problems), set(), {}, []
  # `params` first: where a mismatch usually starts.
  expected = sorted(abstract_variables(model).items(), key=lambda kv: kv[0][0] != "params")
  for path, shape in expected:
    key, layout = rule(path)
    want = layout.foreign_shape(shape)
    where = "/".join(path[1:])
    if key not in weights:
      missing.append(key)
      problems.append(f"missing {key} (shape {want}, for {where})")
      continue
    used.add(key)
    array = np.asarray(weights[key])
    if tuple(array.shape) != want:
      problems.append(f"{key} has shape {tuple(array.shape)}, expected {want} (for {where})")
      continue
    flat[path] = jnp.asarray(layout.to_rmjax(array).astype(np.float32))
  unexpected = [key for key in weights if key not in used and not ignore(key)]
  problems += [f"unexpected {key} (shape {tuple(np.shape(weights[key]))})" for key in unexpected]
  if len(missing) > len(expected) / 2 and len(unexpected) > len(weights) / 2:
    # Another naming altogether: a list of every key would bury the cause.
    raise WeightImportError(
      _other_naming(source, model, missing, unexpected, len(expected), len(weights), problems)
    )
  if problems:
    raise WeightImportError(
      f"{source} does not fit {describe(model)} ({len(problems)} problem(s)):\n  "
      + "\n  ".join(problems)
    )
  return traverse_util.unflatten_dict(flat)


def _other_naming(source, model, missing, unexpected, needed, given, problems) -> str:
  """A few lines for weights whose keys follow another naming: counts, examples, the cause."""
  others = [p for p in problems if not p.startswith(("missing ", "unexpected "))]
  prefix = _common_prefix(missing, unexpected)
  if prefix:
    cause = f"its keys carry the prefix {prefix!r} (e.g. {prefix}{missing[0]}): drop it"
  else:
    cause = "likely the weights of another architecture, or of this one under other names"
  return (
    f"{source} does not fit {describe(model)}: {len(missing)} of the {needed} keys it needs are "
    f"missing and {len(unexpected)} of its {given} keys are not used — {cause}.\n"
    f"  needed, e.g.: {', '.join(missing[:3])}\n"
    f"  found, e.g.:  {', '.join(unexpected[:3])}"
    + (f"\n  and {len(others)} other problem(s), e.g. {others[0]}" if others else "")
  )


def _common_prefix(missing: Sequence[str], unexpected: Sequence[str]) -> str | None:
  """The prefix that turns the needed keys into the file's ones, if one does for most."""
  unused = set(unexpected)
  for key in missing[:3]:
    for candidate in unused:
      if candidate.endswith(key) and candidate != key:
        prefix = candidate[: -len(key)]
        if sum(prefix + m in unused for m in missing) > len(missing) / 2:
          return prefix
  return None


def describe(model) -> str:
  """The architecture in a few words, for messages: class, classes."""
  classes = getattr(model, "num_classes", None)
  return type(model).__name__ + (f" with {classes} classes" if classes else "")


def mobilenetv2_name(model, framework: str) -> str:
  width = mobilenetv2_width(model)
  return f"mobilenetv2 {'custom widths' if width is None else f'width {width:g}'} ({framework})"


_TERMINAL_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def error_text(e: BaseException) -> str:
  """The message of `e` without terminal colour escapes (torch makes parts of its bold)."""
  return _TERMINAL_ESCAPE.sub("", str(e)).strip()


def first_line(e: BaseException) -> str:
  text = error_text(e)
  return text.splitlines()[0] if text else type(e).__name__


def to_numpy(value) -> np.ndarray:
  """A NumPy array from a NumPy array, a torch tensor (any float dtype) or a list."""
  if hasattr(value, "detach"):  # a torch tensor, without importing torch
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()  # NumPy has no bfloat16
    return value.numpy()
  array = np.asarray(value)
  if array.dtype.kind not in "biuf":
    raise TypeError(f"not a numeric array: {type(value).__name__}")
  return array
