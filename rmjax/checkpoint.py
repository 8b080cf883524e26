"""Thin orbax helpers: one CheckpointManager per workdir, states restored into shardings.

A checkpoint directory is `<workdir>/checkpoints/<step>/`; orbax writes each step to a temporary
name and renames it when complete, so a crash never leaves a half-written step that looks valid.
Each step's state directory carries a SHA-256 digest of its files (`rmjax.integrity`), written
in orbax's background thread once the files are final and before the step is committed, and
checked before orbax reads a byte: a damaged checkpoint is refused, never restored.

  >>> mngr = manager("workdirs/demo")
  >>> save(mngr, step, state)                              # asynchronous
  >>> state = restore(mngr, abstract_like(shapes, shardings))   # resume, into shardings
  >>> state = restore_on_one_device(mngr, step)            # convert/evaluate: any saving topology
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from rmjax import integrity


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored (damaged, truncated, unreadable), in words."""


class _DigestedHandler(ocp.StandardCheckpointHandler):
  """orbax's StandardCheckpointHandler; its directory gets a digest once orbax has finalised the
  files, and is checked against it before a restore reads anything."""

  def finalize(self, directory) -> None:
    super().finalize(directory)
    # orbax finalises on the primary process only, after every process has written its files.
    integrity.seal(os.fspath(directory))

  def restore(self, directory, item=None, args=None):
    integrity.check(os.fspath(directory))
    return super().restore(directory, item, args)


def _handlers() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  handler = _DigestedHandler()
  registry.add(None, ocp.args.StandardSave, handler)
  registry.add(None, ocp.args.StandardRestore, handler)
  return registry


def manager(
  workdir: str, *, max_to_keep: int = 3, save_interval_steps: int = 1, create: bool = True
) -> ocp.CheckpointManager:
  """The workdir's CheckpointManager; `create=False` only reads (no `checkpoints/` is made)."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=create
  )
  return ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, "checkpoints")),
    options=options,
    handler_registry=_handlers(),
  )


def save(mngr: ocp.CheckpointManager, step: int, state, *, force: bool = False) -> bool:
  """Saves `state` at `step` (asynchronously); `force` ignores the save interval."""
  return mngr.save(step, args=ocp.args.StandardSave(state), force=force)


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores the state at `step` (default: latest) into the shapes/shardings of
  `abstract_state` (a pytree of `jax.ShapeDtypeStruct` with `.sharding`).

  Raises:
    CheckpointError: the step's files are damaged or cannot be read; the message says which
      and how to resume from an earlier step.
  """
  step = mngr.latest_step() if step is None else step
  return _restore(mngr, step, ocp.args.StandardRestore(abstract_state))


def restore_on_one_device(mngr: ocp.CheckpointManager, step: int, device=None):
  """The state saved at `step` as a nested dict of arrays on `device` (default: the first
  local one), whatever devices and processes wrote it.

  orbax rebuilds the shardings a checkpoint was saved with, and cannot where those devices do
  not exist here (8 GPUs -> 1 CPU); every array is read whole instead.
  """
  device = device or jax.local_devices()[0]
  one = jax.sharding.SingleDeviceSharding(device)
  state = _restore(mngr, step, ocp.args.StandardRestore(fallback_sharding=one))
  # Arrays whose saved sharding does exist here (1 -> N devices) come back on it.
  return jax.device_put(state, one)


def _restore(mngr: ocp.CheckpointManager, step: int, args):
  where = os.path.join(os.fspath(mngr.directory), str(step))
  try:
    return mngr.restore(step, args=args)
  except integrity.DigestError as e:
    problem = str(e)
  except Exception as e:  # orbax and TensorStore raise many types for a damaged checkpoint
    text = str(e).strip()
    problem = f"{type(e).__name__}: {text.splitlines()[0] if text else 'no message'}"
  others = [s for s in mngr.all_steps() if s != step]
  raise CheckpointError(
    f"the checkpoint {where} cannot be restored: {problem}; nothing was restored from it. Delete "
    f"{where} to use an earlier step ({f'steps {others} remain' if others else 'none remains'})."
  )


def abstract_like(state, shardings):
  """`jax.ShapeDtypeStruct`s of `state` carrying `shardings` (a matching pytree)."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
  )
