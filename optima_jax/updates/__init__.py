"""Weight updates under a fixed mask, registered by name.

Every update maps (W_dense (out, in) f32, SelectionResult, LinearStats, H_val | None, **options) to an
`UpdateResult`. Names:
  none    W * keep_mask (the selector's mask, no reconstruction)
  own     the selector's own weights (SparseGPT's OBS update, Thanos' block update; = none for Wanda)
  optima  the OPTIMA QP per row, solved by `optima_jax.qp.solve_rows` (exact solver, the paper's rAPDHG
          setting, or rAPDHG on Σxᵀx)
  adam    the paper's Table 7 ablation: optax adam on the layer's reconstruction error
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from optima_jax.errors import OptimaError


@dataclasses.dataclass
class UpdateResult:
  weight: jax.Array        # (out, in) float32; pruned entries exactly 0
  info: dict               # solver statistics for the report (JSON-serialisable scalars)


UPDATES: dict[str, Callable[..., UpdateResult]] = {}


def register_update(name: str):
  def deco(fn):
    UPDATES[name] = fn
    return fn
  return deco


def get_update(name: str) -> Callable[..., UpdateResult]:
  if name not in UPDATES:
    raise OptimaError(f"unknown weight update {name!r}; registered: {', '.join(sorted(UPDATES))}")
  return UPDATES[name]


def reconstruction_error(W_new: jax.Array, W_dense: jax.Array, H: jax.Array) -> float:
  """||X (W_new − W_dense)ᵀ||² = tr(ΔW H ΔWᵀ), summed over rows (float32 -> python float)."""
  D = (W_new - W_dense).astype(jnp.float32)
  return float(jnp.sum((D @ H) * D))


@register_update("none")
def update_none(W, selection, stats, H_val=None, **_):
  return UpdateResult(jnp.where(selection.keep_mask, W, 0.0), {})


@register_update("own")
def update_own(W, selection, stats, H_val=None, **_):
  return UpdateResult(jnp.where(selection.keep_mask, selection.weight, 0.0), {})


@register_update("optima")
def update_optima(W, selection, stats, H_val=None, *, method="exact", damp=0.0, auto_damp=False,
                  auto_damp_grid=(0.0, 0.01, 0.1, 1.0), eps_abs=1e-2, eps_rel=1e-2,
                  iteration_limit=100_000, rtol=1e-4, memory_budget_bytes=2 << 30, mesh=None, where="layer",
                  **_):
  """OPTIMA: per row, minimise ½ΔᵀHΔ with Δ_i = −w_i on pruned entries (H damped by damp·mean diag H)."""
  from optima_jax import qp

  kw = dict(method=method, eps_abs=eps_abs, eps_rel=eps_rel, iteration_limit=iteration_limit,
            W_init=jnp.where(selection.keep_mask, selection.weight, 0.0),
            memory_budget_bytes=memory_budget_bytes, mesh=mesh, rtol=rtol, where=where,
            n_tokens=int(stats.n_tokens))
  info = {}
  if auto_damp:
    if H_val is None:
      raise OptimaError("solver.auto_damp needs a validation set: set calibration.validation_source")
    auto = qp.auto_damp_solve(stats.H, W, selection.keep_mask, H_val, grid=tuple(auto_damp_grid), **kw)
    info["damp"] = float(auto.damp)
    info["val_errors_by_damp"] = [None if e is None else float(e) for e in auto.val_errors]
    res = auto.result
  else:
    res = qp.solve_rows(stats.H, W, selection.keep_mask, damp=damp, **kw)
    info["damp"] = float(damp)
  info["iterations_mean"] = float(jnp.mean(res.iterations))
  info["iterations_max"] = int(jnp.max(res.iterations))
  if method == "rapdhg":   # the paper's rule: the fraction of OPTIMAL rows in its worst mini-batch
    info["converged_fraction"] = qp.paper.min_minibatch_fraction(res.converged, W.shape[1])
  else:
    info["converged_fraction"] = float(jnp.mean(res.converged.astype(jnp.float32)))
  return UpdateResult(res.weight, info)


@register_update("adam")
def update_adam(W, selection, stats, H_val=None, *, adam_steps=500, adam_lrs=(1e-2, 1e-3, 1e-4, 1e-5),
                damp=0.0, **_):
  from optima_jax.updates.adam import adam_update

  weight, info = adam_update(W, selection.keep_mask, stats.H, lrs=tuple(adam_lrs), steps=adam_steps,
                             init=jnp.where(selection.keep_mask, selection.weight, 0.0), damp=damp)
  return UpdateResult(weight, _jsonable(info))


def _jsonable(info: dict) -> dict:
  out = {}
  for k, v in info.items():
    if isinstance(v, (bool, int, float, str)) or v is None:
      out[k] = v
    elif isinstance(v, dict):
      out[k] = _jsonable(v)
    else:
      try:
        arr = jnp.asarray(v)
        out[k] = arr.item() if arr.ndim == 0 else [float(x) for x in arr.reshape(-1)]
      except TypeError:
        out[k] = str(v)
  return out
