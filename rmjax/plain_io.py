"""A plain network on disk: `save_plain(dir, plain, variables)` / `load_plain(dir)`.

A PLAIN directory holds
  plain.json     the architecture: format version, the layer specs (`PlainNet.layers`, one JSON
                 object per layer), the feature taps (`PlainNet.taps`; only where there are
                 any, so files without them load as before), the input shape, and where it
                 came from (model, checkpoint);
  variables/     the variables (orbax), restored against shapes derived from plain.json;
  SHA256SUMS     the SHA-256 of every file (`sha256sum -c SHA256SUMS` checks it by hand).

So a plain network loads without the config or code of the model it was converted from:

  >>> plain, variables = rmjax.load_plain("workdirs/demo/plain")
  >>> logits = plain.apply(variables, x)

Writing is atomic: everything goes to a temporary sibling directory that is renamed into place
only when complete, so an interrupted or failed write leaves no `dir` behind. Loading checks
SHA256SUMS first (`rmjax.integrity`) and refuses a damaged directory, and weights with NaN or inf.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from rmjax import atomic, integrity
from rmjax.models import plain as plain_layers

FORMAT = "rmjax.plain/1"
ARCH_FILE = "plain.json"
VARIABLES_DIR = "variables"

_LAYER_TYPES = {
  cls.__name__: cls
  for cls in (
    plain_layers.Conv,
    plain_layers.BatchNorm,
    plain_layers.ReLU,
    plain_layers.PReLU,
    plain_layers.SqueezeExcite,
    plain_layers.MaxPool,
    plain_layers.GlobalAvgPool,
    plain_layers.Dense,
  )
}


class PlainFormatError(ValueError):
  """A PLAIN directory that is missing, incomplete, or does not hold what plain.json says."""


def layers_to_json(layers) -> list[dict[str, Any]]:
  return [{"type": type(layer).__name__, **dataclasses.asdict(layer)} for layer in layers]


def layers_from_json(entries) -> tuple[plain_layers.Layer, ...]:
  layers = []
  for i, entry in enumerate(entries):
    fields = dict(entry)
    kind = fields.pop("type", None)
    if kind not in _LAYER_TYPES:
      raise PlainFormatError(
        f"layer {i}: unknown type {kind!r}; known: {', '.join(sorted(_LAYER_TYPES))}"
      )
    try:
      layers.append(_LAYER_TYPES[kind](**fields))
    except (TypeError, ValueError) as e:  # unknown fields; a padding that is no padding
      raise PlainFormatError(f"layer {i} ({kind}): {e}") from None
  return tuple(layers)


def plain_from_arch(arch: dict[str, Any]) -> plain_layers.PlainNet:
  """The `PlainNet` a parsed plain.json (`read_arch`) describes: its layers and taps."""
  layers = layers_from_json(arch["layers"])
  taps = arch.get("taps", [])
  if not isinstance(taps, list) or not all(isinstance(t, int) for t in taps):
    raise PlainFormatError(f"taps {taps!r}: expected a list of layer indices")
  try:
    return plain_layers.PlainNet(layers, taps=tuple(taps))
  except ValueError as e:
    raise PlainFormatError(str(e)) from None


def save_plain(
  path: str,
  plain: plain_layers.PlainNet,
  variables,
  *,
  input_shape: tuple[int, ...],
  source: dict[str, Any] | None = None,
  overwrite: bool = False,
) -> None:
  """Writes `plain` and its `variables` to the directory `path`, atomically.

  Args:
    input_shape: one input's shape without the batch axis, e.g. `(32, 32, 3)`.
    source: JSON-serialisable provenance (model name, checkpoint, step, ...), kept in plain.json.
    overwrite: replace an existing `path` (only once the new one is complete).

  Raises:
    FileExistsError: `path` exists and `overwrite` is False.
    OSError: the parent directory cannot be written.
  """
  path = os.path.abspath(path)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(
      f"{path} already exists (pass overwrite=True / --overwrite to replace it)"
    )
  with atomic.staged_dir(path) as tmp:
    arch = {
      "format": FORMAT,
      "input_shape": list(input_shape),
      "layers": layers_to_json(plain.layers),
      "source": source or {},
    }
    if plain.taps:
      arch["taps"] = list(plain.taps)
    with open(os.path.join(tmp, ARCH_FILE), "w") as f:
      json.dump(arch, f, indent=1)
      f.write("\n")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, VARIABLES_DIR), jax.device_get(variables))
    checkpointer.wait_until_finished()
    integrity.seal(tmp)  # SHA256SUMS over plain.json and variables/, before it is published


def read_arch(path: str) -> dict[str, Any]:
  """The parsed plain.json of a PLAIN directory (checked for format and fields)."""
  arch_file = os.path.join(path, ARCH_FILE)
  if not os.path.isdir(path):
    raise PlainFormatError(f"{path} is not a directory written by convert.py (no such directory)")
  if not os.path.exists(arch_file):
    raise PlainFormatError(f"{path} has no {ARCH_FILE}: not a plain network written by convert.py")
  try:
    with open(arch_file) as f:
      arch = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise PlainFormatError(f"{arch_file} cannot be read as JSON: {e}") from None
  if not isinstance(arch, dict) or arch.get("format") != FORMAT:
    got = arch.get("format") if isinstance(arch, dict) else type(arch).__name__
    raise PlainFormatError(f"{arch_file}: format {got!r} is not {FORMAT!r}")
  for key in ("layers", "input_shape"):
    if key not in arch:
      raise PlainFormatError(f"{arch_file} has no {key!r}")
  return arch


def abstract_variables(plain: plain_layers.PlainNet, input_shape):
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  return jax.eval_shape(lambda x: plain.init(jax.random.key(0), x), x)


def load_plain(path: str):
  """`(PlainNet, variables)` from a directory written by `save_plain` / `convert.py`.

  Raises:
    PlainFormatError (a ValueError): the directory is missing, is not a plain network, differs
      from its digest (SHA256SUMS), or its variables are missing, truncated, not finite or do not
      have the shapes plain.json implies.
  """
  path = os.path.abspath(path)
  variables_dir = os.path.join(path, VARIABLES_DIR)
  if os.path.isfile(os.path.join(path, ARCH_FILE)):  # else read_arch says what `path` is
    if not os.path.isdir(variables_dir):
      raise PlainFormatError(f"{path} has no {VARIABLES_DIR}/ directory: the write was incomplete")
    try:  # before anything is parsed: a damaged plain.json can still be valid JSON
      integrity.check(path)
    except integrity.DigestError as e:
      raise PlainFormatError(f"{path} cannot be used: {e}") from None
  arch = read_arch(path)
  plain = plain_from_arch(arch)
  try:
    target = abstract_variables(plain, tuple(arch["input_shape"]))
  except Exception as e:  # flax asserts on inconsistent widths
    raise PlainFormatError(
      f"the layers of {os.path.join(path, ARCH_FILE)} do not fit together on inputs of shape "
      f"{tuple(arch['input_shape'])} ({type(e).__name__}: {_first_line(e)})"
    ) from None
  problem = None
  try:
    variables = ocp.StandardCheckpointer().restore(variables_dir, target)
  except Exception as e:  # orbax raises many types for a damaged directory
    problem = f"{type(e).__name__}: {_first_line(e)}"
  else:
    want = jax.tree.map(lambda a: tuple(a.shape), target)
    got = jax.tree.map(lambda a: tuple(jnp.shape(a)), variables)
    if want != got:
      problem = "their shapes differ from what the layers need"
  if problem:
    raise PlainFormatError(
      f"the variables in {variables_dir} cannot be restored for the layers of {ARCH_FILE} "
      f"({problem})"
    )
  try:
    integrity.check_finite(variables, path)
  except integrity.NonFiniteError as e:
    raise PlainFormatError(str(e)) from None
  return plain, variables


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else "no message"
