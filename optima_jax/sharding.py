"""Device meshes and multi-host initialisation.

Two 1-D meshes over the same devices:
  data mesh, axis "data": calibration sequences are split over it and Hessians are summed across it.
  rows mesh, axis "rows": the solver's row batches are split over it with shard_map.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import Mesh

from optima_jax.errors import OptimaError

log = logging.getLogger("optima_jax.sharding")


def maybe_initialize_distributed(enabled: bool):
  """Call jax.distributed.initialize() once (TPU pod slices and multi-process GPU launches).

  On Cloud TPU VMs the coordinator and process ids are discovered automatically; elsewhere set
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (read by jax.distributed).
  """
  if not enabled:
    return
  import os
  kwargs = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                  process_id=int(os.environ["JAX_PROCESS_ID"]))
  jax.distributed.initialize(**kwargs)
  log.info("jax.distributed: process %d of %d, %d global devices", jax.process_index(),
           jax.process_count(), jax.device_count())


def _take(n: int, what: str):
  devices = jax.devices()
  if n == -1:
    n = len(devices)
  if n < 1 or n > len(devices):
    raise OptimaError(f"mesh.{what}={n} but {len(devices)} devices are available")
  return np.array(devices[:n])


def make_meshes(data: int = -1, rows: int = 1) -> tuple[Mesh, Mesh]:
  """-> (data_mesh with axis "data", rows_mesh with axis "rows"). -1 takes every device."""
  return Mesh(_take(data, "data"), ("data",)), Mesh(_take(rows, "rows"), ("rows",))


def is_main_process() -> bool:
  return jax.process_index() == 0
