"""rmjax.checkpoint: each step's files carry a digest written by orbax's asynchronous save; a
damaged step is refused (the file named) before orbax reads it; a step restores onto one device."""

import os

import chex
import jax
import jax.numpy as jnp
import pytest

from rmjax import checkpoint, integrity
from rmjax.testing import array_data_files, flip_byte


def states():
  base = {"w": jnp.arange(3000.0), "b": {"c": jnp.ones((3, 3))}, "step": jnp.int32(0)}
  return {step: jax.tree.map(lambda x, s=step: x + s, base) for step in (1, 2)}


def test_async_saves_are_sealed_and_checked_on_restore(tmp_path):
  mngr = checkpoint.manager(str(tmp_path))
  for step, state in states().items():
    checkpoint.save(mngr, step, state)  # returns before the files are written
  mngr.wait_until_finished()
  step_dirs = {step: tmp_path / "checkpoints" / str(step) / "default" for step in (1, 2)}
  for step_dir in step_dirs.values():
    assert integrity.check(str(step_dir))
  abstract = checkpoint.abstract_like(states()[2], jax.tree.map(lambda x: x.sharding, states()[2]))
  chex.assert_trees_all_equal(checkpoint.restore(mngr, abstract), states()[2])  # the latest
  data = array_data_files(step_dirs[2])[-1]
  flip_byte(data, os.path.getsize(data) // 2)
  where = tmp_path / "checkpoints" / "2"
  with pytest.raises(
    checkpoint.CheckpointError,
    match=f"{where} cannot be restored: {data} is damaged.*Delete {where} to use an earlier step "
    r"\(steps \[1\] remain\)",
  ):
    checkpoint.restore(mngr, abstract, 2)
  chex.assert_trees_all_equal(checkpoint.restore(mngr, abstract, 1), states()[1])
  mngr.close()


def test_restore_on_one_device_reads_a_step_as_arrays_there(tmp_path):
  mngr = checkpoint.manager(str(tmp_path))
  checkpoint.save(mngr, 1, states()[1])
  mngr.wait_until_finished()
  reader = checkpoint.manager(str(tmp_path), create=False)
  restored = checkpoint.restore_on_one_device(reader, 1)
  chex.assert_trees_all_equal(restored, states()[1])
  device = jax.local_devices()[0]
  assert all(leaf.devices() == {device} for leaf in jax.tree.leaves(restored))
  mngr.close()
  reader.close()


def test_a_reading_manager_creates_nothing(tmp_path):
  reader = checkpoint.manager(str(tmp_path / "run"), create=False)
  assert reader.all_steps() == []
  reader.close()
  assert os.listdir(tmp_path) == []
