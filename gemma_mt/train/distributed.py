"""Joining a multi-process job: JAX's own runtime (``jax.distributed``), nothing home-made.

Each process of the job calls ``initialize`` before touching a device. Explicit coordinator
flags take precedence; with none, JAX's auto-detection runs where a cluster scheduler is visible
(SLURM, Open MPI, Kubernetes); otherwise the run is a single process.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from gemma_mt import errors

# Environment variables by which JAX's cluster detection recognises a multi-process job.
_CLUSTER_VARIABLES = {
    'SLURM': ('SLURM_JOB_ID', 'SLURM_NTASKS'),
    'Open MPI': ('OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK'),
    'Kubernetes': ('KUBERNETES_SERVICE_HOST', 'JOB_COMPLETION_INDEX'),
}


class DistributedError(errors.UserError):
  """Coordinator flags that do not describe a job."""


@dataclasses.dataclass(frozen=True)
class DistributedOptions:
  """How this process joins a job.

  Attributes:
    coordinator_address: ``host:port`` of process 0's coordinator ('' for auto-detection).
    num_processes: processes in the job (0 for auto-detection).
    process_id: this process's index (-1 for auto-detection).
    cpu_devices_per_process: CPU devices to simulate in this process (0: JAX's default).
    heartbeat_timeout_seconds: how long a silent process is waited for before the job fails.
  """

  coordinator_address: str = ''
  num_processes: int = 0
  process_id: int = -1
  cpu_devices_per_process: int = 0
  heartbeat_timeout_seconds: int = 20

  def explicit(self) -> bool:
    return bool(self.coordinator_address) or self.num_processes > 0 or self.process_id >= 0

  def validate(self) -> DistributedOptions:
    if self.explicit():
      if not (self.coordinator_address and self.num_processes > 0 and self.process_id >= 0):
        raise DistributedError('--coordinator_address, --num_processes and --process_id go '
                               'together: give all three, or none for auto-detection')
      if self.process_id >= self.num_processes:
        raise DistributedError(f'--process_id={self.process_id} must be below '
                               f'--num_processes={self.num_processes}')
      if ':' not in self.coordinator_address:
        raise DistributedError(f'--coordinator_address={self.coordinator_address!r}: '
                               'write host:port')
    if self.cpu_devices_per_process < 0 or self.heartbeat_timeout_seconds <= 0:
      raise DistributedError('--cpu_devices_per_process must be >= 0 and '
                             '--heartbeat_timeout_seconds > 0')
    return self


def detected_cluster(environ: Mapping[str, str] = os.environ) -> str | None:
  """The scheduler whose multi-process job this process is part of, if any."""
  for name, variables in _CLUSTER_VARIABLES.items():
    if all(v in environ for v in variables):
      if name == 'SLURM' and int(environ.get('SLURM_NTASKS', '1')) <= 1:
        continue
      if name == 'Open MPI' and int(environ.get('OMPI_COMM_WORLD_SIZE', '1')) <= 1:
        continue
      return name
  return None


def initialize(options: DistributedOptions) -> None:
  """Configures this process's devices and joins the job (or stays a single process)."""
  import jax  # pylint: disable=import-outside-toplevel

  options.validate()
  if options.cpu_devices_per_process:
    jax.config.update('jax_num_cpu_devices', options.cpu_devices_per_process)
  if options.explicit():
    jax.distributed.initialize(
        coordinator_address=options.coordinator_address,
        num_processes=options.num_processes,
        process_id=options.process_id,
        heartbeat_timeout_seconds=options.heartbeat_timeout_seconds)
  elif detected_cluster() is not None:
    jax.distributed.initialize(heartbeat_timeout_seconds=options.heartbeat_timeout_seconds)


def agreed_max(value: int) -> int:
  """The largest ``value`` of all the job's processes, each of which calls this at the same
  point: one decision for the whole job (e.g. the worst outcome of a step that can fail)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  if jax.process_count() == 1:
    return value
  return int(np.max(multihost_utils.process_allgather(np.int64(value))))
