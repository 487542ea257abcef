"""Device meshes, multi-host initialisation and conversions between global and process-local arrays.

Two 1-D meshes:
  data mesh, axis "data", over the *global* devices (every process's): calibration micro-batches are split
    over it and Hessians are summed across it (XLA inserts the all-reduce, across hosts too). With
    `mesh.shard_params` a block's MLP weights are also split over it along the intermediate dimension.
  rows mesh, axis "rows", over this process's *local* devices: the solver splits a linear's row batches
    over it with shard_map. Every process solves every linear redundantly and identically (the inputs are
    process-local copies of replicated arrays), so no cross-host traffic is needed after the Hessians.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from optima_jax.errors import OptimaError

log = logging.getLogger("optima_jax.sharding")

_initialized = False


def maybe_initialize_distributed(enabled: bool):
    """Call jax.distributed.initialize() once (TPU pod slices, multi-process GPU/CPU launches).

    On Cloud TPU VMs the coordinator and process ids are discovered automatically; elsewhere set
    JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID. On CPU, the
    gloo collectives are enabled first so that the Hessian all-reduce can cross processes.
    """
    global _initialized
    if not enabled or _initialized:
        return
    kwargs = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        try:
            kwargs = dict(
                coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                process_id=int(os.environ["JAX_PROCESS_ID"]),
            )
        except (KeyError, ValueError) as e:
            raise OptimaError(
                "JAX_COORDINATOR_ADDRESS is set, so JAX_NUM_PROCESSES and JAX_PROCESS_ID must be "
                f"integers too ({type(e).__name__}: {e})"
            ) from None
    platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
    if platforms.split(",")[0] == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    _initialized = True
    log.info(
        "jax.distributed: process %d of %d, %d global / %d local devices",
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
        jax.local_device_count(),
    )


def _take(devices, n: int, what: str, kind: str):
    if n == -1:
        n = len(devices)
    if n < 1 or n > len(devices):
        raise OptimaError(f"mesh.{what}={n} but {len(devices)} {kind} devices are available")
    return np.array(devices[:n])


def make_meshes(data: int = -1, rows: int = 1) -> tuple[Mesh, Mesh]:
    """-> (data_mesh with axis "data" over global devices, rows_mesh with axis "rows" over local devices).

    -1 takes every device. In a multi-process run the data mesh must span every process (each host holds
    only its own shard of the calibration batch), so `data` must be -1 or the global device count.
    """
    if jax.process_count() > 1 and data not in (-1, jax.device_count()):
        raise OptimaError(
            f"mesh.data={data}: a multi-process run needs the data axis over all {jax.device_count()} devices (use -1)"
        )
    return (
        Mesh(_take(jax.devices(), data, "data", "global"), ("data",)),
        Mesh(_take(jax.local_devices(), rows, "rows", "local"), ("rows",)),
    )


def is_main_process() -> bool:
    return jax.process_index() == 0


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def data_size(mesh: Mesh | None) -> int:
    """Devices on the mesh's "data" axis (1 without a mesh)."""
    if mesh is None or "data" not in mesh.axis_names:
        return 1
    return int(mesh.shape["data"])


def to_local(x):
    """A value every process can use on its own: the process-local copy of a global jax.Array.

    Fully addressable arrays and non-jax values pass through. A fully replicated global array gives its
    local shard (no communication); any other global array is all-gathered (numpy, the global value).
    """
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return x
    if x.sharding.is_fully_replicated:
        return x.addressable_data(0)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(x, tiled=True)


def to_default_device(x):
    """`to_local(x)` as an *uncommitted* array on this process's default device (via host memory), so that
    later ops may combine it with arrays on any device set (e.g. the solver's rows mesh)."""
    import jax.numpy as jnp

    return jnp.asarray(np.asarray(to_local(x)))


def sync(name: str):
    """Barrier across processes (no-op with one process)."""
    if is_multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _to_int32_words(v) -> np.ndarray:
    """A Python int/bool/float as int32/float32 words that survive a broadcast without x64: ints (e.g. free
    disk bytes, which pass 2**31) split into a high and a low 31-bit word, exact for |v| < 2**61."""
    if isinstance(v, (bool, np.bool_)):
        return np.asarray(v)
    if isinstance(v, (int, np.integer)):
        v = int(v)
        if abs(v) >= 2**61:
            raise ValueError(f"broadcast_from_main: integer {v} is out of range (|v| < 2**61)")
        return np.asarray([v >> 31, v & (2**31 - 1)], np.int32)
    return np.asarray(v)


def _from_int32_words(template, got):
    got = np.asarray(got)
    if isinstance(template, (bool, np.bool_)):
        return bool(got.item())
    if isinstance(template, (int, np.integer)):
        return (int(got[0]) << 31) + int(got[1])
    return got.item()


def broadcast_from_main(value):
    """Process 0's value of a small pytree of Python numbers/bools on every process (identity with one
    process). Integers are exact up to 2**61 (they travel as two int32 words; jax without x64 would wrap
    them at 2**31); floats travel as float32."""
    if not is_multiprocess():
        return value
    from jax.experimental import multihost_utils

    got = multihost_utils.broadcast_one_to_all(jax.tree.map(_to_int32_words, value))
    return jax.tree.map(_from_int32_words, value, got)


# --------------------------------------------------------------------------- block params over the mesh


def param_spec(path: tuple, shape: tuple, n: int, mlp: dict[str, str]) -> P:
    """PartitionSpec of one block tensor under `mesh.shard_params`: the MLP's intermediate dimension over
    "data" when it divides by the axis size `n`, everything else replicated. `mlp`: the family's MLP linears and
    the side of their intermediate dimension (`models.api.mlp_linears`): "out" splits weights and biases along
    out_features, "in" splits weights along in_features."""
    keys = ".".join(str(getattr(k, "key", k)) for k in path)
    side = next((s for name, s in mlp.items() if keys.startswith(name + ".")), None)
    if side == "out" and shape and shape[0] % n == 0:
        return P("data", *([None] * (len(shape) - 1)))
    if side == "in" and len(shape) == 2 and shape[1] % n == 0:
        return P(None, "data")
    return P()


def shard_block_state(state, mesh: Mesh, mlp: dict[str, str], shard_params: bool = True):
    """Place a block's nnx.State over the data mesh: per `param_spec` (jit then runs the MLP tensor-parallel)
    with `shard_params`, else replicated on every device of the mesh. `mlp`: `models.api.mlp_linears(config)`."""
    n = data_size(mesh) if shard_params else 0
    multi = is_multiprocess()

    def put(path, x):
        sh = NamedSharding(mesh, param_spec(path, x.shape, n, mlp) if n else P())
        return jax.device_put(np.asarray(x) if multi else x, sh)

    return jax.tree_util.tree_map_with_path(put, state)
