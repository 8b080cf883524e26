"""Thin orbax helpers: one CheckpointManager per workdir, states restored into shardings.

A checkpoint directory is `<workdir>/checkpoints/<step>/`; orbax writes each step to a temporary
name and renames it when complete, so a crash never leaves a half-written step that looks valid.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


def manager(workdir: str, *, max_to_keep: int = 3, save_interval_steps: int = 1):
  """The workdir's CheckpointManager (created on first use)."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True
  )
  return ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, "checkpoints")), options=options
  )


def save(mngr: ocp.CheckpointManager, step: int, state, *, force: bool = False) -> bool:
  """Saves `state` at `step` (asynchronously); `force` ignores the save interval."""
  return mngr.save(step, args=ocp.args.StandardSave(state), force=force)


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores the state at `step` (default: latest) into the shapes/shardings of
  `abstract_state` (a pytree of `jax.ShapeDtypeStruct` with `.sharding`)."""
  step = mngr.latest_step() if step is None else step
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def abstract_like(state, shardings):
  """`jax.ShapeDtypeStruct`s of `state` carrying `shardings` (a matching pytree)."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
  )
