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
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp

from optima_jax import qp
from optima_jax.config import default_config
from optima_jax.errors import OptimaError
from optima_jax.qp.paper import minibatch_fraction_min as paper_minibatch_fraction
from optima_jax.selectors.masks import apply_mask
from optima_jax.transfers import fetch, to_device
from optima_jax.updates.adam import adam_update, recon_error


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
    """||X (W_new − W_dense)ᵀ||² = tr(ΔW H ΔWᵀ), summed over rows (float32 on the device -> python float)."""
    return float(fetch(recon_error(to_device(W_dense, jnp.float32), to_device(W_new, jnp.float32), H)))


@register_update("none")
def update_none(W, selection, stats, H_val, settings: UpdateSettings, *, where: str = "layer"):
    return UpdateResult(apply_mask(selection.keep_mask, W), {})


@register_update("own")
def update_own(W, selection, stats, H_val, settings: UpdateSettings, *, where: str = "layer"):
    return UpdateResult(apply_mask(selection.keep_mask, selection.weight), {})


@partial(jax.jit, static_argnames=("paper_in_features",))
def _solve_summary(iterations, converged, *, paper_in_features):
    """The report's solver numbers as device scalars; rapdhg (paper_in_features set): the paper's rule, the
    fraction of OPTIMAL rows in its worst mini-batch."""
    if paper_in_features:
        conv = paper_minibatch_fraction(converged, paper_in_features)
    else:
        conv = jnp.mean(converged.astype(jnp.float32))
    return {
        "iterations_mean": jnp.mean(iterations.astype(jnp.float32)),
        "iterations_max": jnp.max(iterations),
        "converged_fraction": conv,
    }


@register_update("optima")
def update_optima(W, selection, stats, H_val, settings: UpdateSettings, *, where: str = "layer"):
    """OPTIMA: per row, minimise ½ΔᵀHΔ with Δ_i = −w_i on pruned entries (H damped by damp·mean diag H)."""
    s = settings
    kw = dict(
        method=s.method,
        eps_abs=s.eps_abs,
        eps_rel=s.eps_rel,
        iteration_limit=s.iteration_limit,
        W_init=apply_mask(selection.keep_mask, selection.weight),
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
    summary = fetch(
        _solve_summary(res.iterations, res.converged, paper_in_features=W.shape[1] if s.method == "rapdhg" else 0)
    )
    info["iterations_mean"] = float(summary["iterations_mean"])
    info["iterations_max"] = int(summary["iterations_max"])
    info["converged_fraction"] = float(summary["converged_fraction"])
    return UpdateResult(res.weight, info)


@register_update("adam")
def update_adam(W, selection, stats, H_val, settings: UpdateSettings, *, where: str = "layer"):
    weight, info = adam_update(
        W,
        selection.keep_mask,
        stats.H,
        lrs=settings.adam_lrs,
        steps=settings.adam_steps,
        init=apply_mask(selection.keep_mask, selection.weight),
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
