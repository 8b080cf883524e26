"""The device mesh of data parallelism: state replicated (`P()`), batches sharded over `data`.

Under `jax.jit`, BatchNorm statistics over a sharded batch are computed over the global batch,
so 1 device and N devices compute the same thing. Every process feeds its own slice of each
global batch (`global_batch`).

  >>> mesh = Mesh.create()                       # every device of every process
  >>> batch = mesh.global_batch({"image": local_images, "label": local_labels})
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class Mesh:
  """The device mesh and the two shardings the loop uses."""

  mesh: jax.sharding.Mesh
  replicated: NamedSharding
  batch: NamedSharding

  @classmethod
  def create(cls, devices=None):
    devices = jax.devices() if devices is None else list(devices)
    mesh = jax.make_mesh(
      (len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )
    return cls(mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P("data")))

  def global_batch(self, local_batch: dict[str, np.ndarray]):
    """This process's slice of a global batch -> global arrays sharded over `data`."""
    return {
      k: jax.make_array_from_process_local_data(self.batch, v) for k, v in local_batch.items()
    }


def replicated(variables, mesh: Mesh):
  """The same arrays on every process -> global arrays replicated over `mesh`."""
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(mesh.replicated, np.asarray(x)), variables
  )
