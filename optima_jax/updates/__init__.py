"""Weight updates under a fixed mask, registered by name.

Every update maps (W_dense (out, in) f32, SelectionResult, LinearStats, H_val | None, UpdateSettings, where=name)
to an `UpdateResult`. Names:
  none    W * keep_mask (the selector's mask, no reconstruction)
  own     the selector's own weights (SparseGPT's OBS update, Thanos' block update; = none for Wanda)
  optima  the OPTIMA QP per row, solved by `optima_jax.qp.solve_rows` (exact solver, the paper's rAPDHG
          setting, or rAPDHG on Σxᵀx)
  adam    the paper's Table 7 ablation: optax adam on the layer's reconstruction error

`UpdateSettings` is the typed view of a run config's solver.* and adam.* settings: built from the config
(`UpdateSettings.from_config`), so its defaults are the config's and nothing here restates them; a field that
does not exist is an error, not silently dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from optima_jax.errors import OptimaError


@dataclasses.dataclass(frozen=True)
class UpdateSettings:
    """What the updates read from a run config (solver.*, adam.*), plus the solver's device mesh."""

    method: str
    damp: float
    auto_damp: bool
    auto_damp_grid: tuple[float, ...]
    eps_abs: float
    eps_rel: float
    iteration_limit: int
    rtol: float
    memory_budget_bytes: int
    adam_steps: int
    adam_lrs: tuple[float, ...]
    mesh: Any = None

    @classmethod
    def from_config(cls, cfg=None, mesh=None, **overrides) -> "UpdateSettings":
        """From a run config (default: `default_config()`); `overrides` replace fields by name."""
        if cfg is None:
            from optima_jax.config import default_config

            cfg = default_config()
        s = cfg.solver
        out = cls(
            method=str(s.method),
            damp=float(s.damp),
            auto_damp=bool(s.auto_damp),
            auto_damp_grid=tuple(float(g) for g in s.auto_damp_grid),
            eps_abs=float(s.eps_abs),
            eps_rel=float(s.eps_rel),
            iteration_limit=int(s.iteration_limit),
            rtol=float(s.rtol),
            memory_budget_bytes=int(float(s.memory_budget_gb) * (1 << 30)),
            adam_steps=int(cfg.adam.steps),
            adam_lrs=tuple(float(x) for x in cfg.adam.lrs),
            mesh=mesh,
        )
        return dataclasses.replace(out, **overrides)  # an unknown field name raises TypeError


@dataclasses.dataclass
class UpdateResult:
    weight: jax.Array  # (out, in) float32; pruned entries exactly 0
    info: dict  # solver statistics for the report (JSON-serialisable scalars)


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
def update_none(W, selection, stats, H_val, settings: UpdateSettings, *, where: str = "layer"):
    return UpdateResult(jnp.where(selection.keep_mask, W, 0.0), {})


@register_update("own")
def update_own(W, selection, stats, H_val, settings: UpdateSettings, *, where: str = "layer"):
    return UpdateResult(jnp.where(selection.keep_mask, selection.weight, 0.0), {})


@register_update("optima")
def update_optima(W, selection, stats, H_val, settings: UpdateSettings, *, where: str = "layer"):
    """OPTIMA: per row, minimise ½ΔᵀHΔ with Δ_i = −w_i on pruned entries (H damped by damp·mean diag H)."""
    from optima_jax import qp

    s = settings
    kw = dict(
        method=s.method,
        eps_abs=s.eps_abs,
        eps_rel=s.eps_rel,
        iteration_limit=s.iteration_limit,
        W_init=jnp.where(selection.keep_mask, selection.weight, 0.0),
        memory_budget_bytes=s.memory_budget_bytes,
        mesh=s.mesh,
        rtol=s.rtol,
        where=where,
        n_tokens=int(stats.n_tokens),
    )
    info = {}
    if s.auto_damp:
        if H_val is None:
            raise OptimaError("solver.auto_damp needs a validation set: set calibration.validation_source")
        auto = qp.auto_damp_solve(stats.H, W, selection.keep_mask, H_val, grid=s.auto_damp_grid, **kw)
        info["damp"] = float(auto.damp)
        info["val_errors_by_damp"] = [None if e is None else float(e) for e in auto.val_errors]
        res = auto.result
    else:
        res = qp.solve_rows(stats.H, W, selection.keep_mask, damp=s.damp, **kw)
        info["damp"] = float(s.damp)
    info["iterations_mean"] = float(jnp.mean(res.iterations))
    info["iterations_max"] = int(jnp.max(res.iterations))
    if s.method == "rapdhg":  # the paper's rule: the fraction of OPTIMAL rows in its worst mini-batch
        info["converged_fraction"] = qp.paper.min_minibatch_fraction(res.converged, W.shape[1])
    else:
        info["converged_fraction"] = float(jnp.mean(res.converged.astype(jnp.float32)))
    return UpdateResult(res.weight, info)


@register_update("adam")
def update_adam(W, selection, stats, H_val, settings: UpdateSettings, *, where: str = "layer"):
    from optima_jax.updates.adam import adam_update

    weight, info = adam_update(
        W,
        selection.keep_mask,
        stats.H,
        lrs=settings.adam_lrs,
        steps=settings.adam_steps,
        init=jnp.where(selection.keep_mask, selection.weight, 0.0),
        damp=settings.damp,
        where=where,
    )
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
