"""The device mesh and how arrays are laid out on it.

The mesh has the axes ``data``, ``fsdp`` and ``tensor``; batches are split over ``data`` and
``fsdp``. Parameters and optimizer state are replicated for now.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gemma_mt.data.records import TrainingInput

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """All devices (of all processes) on the ``data`` axis."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices).reshape(len(devices), 1, 1), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows over ``data`` × ``fsdp``, the sequence dimension whole."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def state_sharding(mesh: Mesh, abstract_state: Any) -> Any:
  """A sharding for every leaf of the train state."""
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def global_batch(local: TrainingInput, mesh: Mesh) -> TrainingInput:
  """This process's rows → global ``jax.Array``s laid out by ``batch_sharding``."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)
