"""The only host <-> device crossings of the per-linear prune step: explicit, small and counted.

From the engine's Hessian to the write-back, H, W, the keep masks and every solver work array stay device
arrays (selectors, updates, `qp.solve_rows`, the keep-or-skip safeguard). What crosses, and only through here:

  * in:  python scalars (damp, tolerances, iteration caps) and small index vectors (`put`);
  * out: report numbers and row-level flags (`fetch`): 0-d or 1-d arrays only, never a matrix.

Everything else in that path is jitted, so `jax.transfer_guard("disallow")` around one linear's prune step
raises on any implicit transfer (tests/test_device_resident.py). `FETCHED` counts what `fetch` brought back.
"""

from __future__ import annotations

import jax
import numpy as np

from optima_jax.errors import OptimaError

FETCHED = {"calls": 0, "arrays": 0, "elements": 0, "largest": 0}  # running totals of fetch()


def reset_counts() -> None:
    for k in FETCHED:
        FETCHED[k] = 0


def put(x, dtype=np.float32) -> jax.Array:
    """A python scalar or small host vector as a device array (an explicit host-to-device transfer)."""
    return jax.device_put(np.asarray(x, dtype))


def fetch(tree):
    """Bring scalars and row-level vectors (ndim <= 1) to the host as numpy: an explicit device-to-host
    transfer, counted in FETCHED. A leaf of more than one dimension is a programming error: matrices stay
    on the device."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if isinstance(x, jax.Array)]
    for x in leaves:
        if x.ndim > 1:
            raise OptimaError(f"transfers.fetch: refusing to copy a {x.ndim}-d array {tuple(x.shape)} to the host")
    FETCHED["calls"] += 1
    FETCHED["arrays"] += len(leaves)
    for x in leaves:
        FETCHED["elements"] += int(x.size)
        FETCHED["largest"] = max(FETCHED["largest"], int(x.size))
    return jax.device_get(tree)


def fetch_float(x) -> float:
    return float(fetch(x))


def to_device(x, dtype=None) -> jax.Array:
    """A jax array stays where it is (cast on the device if `dtype` differs); a host array is uploaded
    explicitly (library calls with numpy inputs)."""
    if isinstance(x, jax.Array):
        return x if dtype is None or x.dtype == np.dtype(dtype) else x.astype(dtype)
    return jax.device_put(np.asarray(x, dtype))
