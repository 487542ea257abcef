"""One linear at a time: selector → mask (+ its own update) → weight update → keep-or-skip safeguard.

`make_pruner(cfg, rows_mesh)` turns a run config into the engine's `Pruner` (LinearTask -> LinearResult).
"""

from __future__ import annotations

import math
import time

import jax.numpy as jnp

from optima_jax.engine import LinearResult, LinearTask
from optima_jax.selectors import get_selector
from optima_jax.sparsity import SparsitySpec
from optima_jax.updates import UpdateSettings, get_update, reconstruction_error


def selector_options(cfg, task: LinearTask) -> dict:
    if cfg.selector == "external":
        return dict(path=cfg.selector_options.mask_file, name=task.full_name, where=task.full_name)
    return dict(where=task.full_name)


def _safe_ratio(a, b):
    return None if b is None or a is None or b <= 0 else a / b


def make_pruner(cfg, rows_mesh=None):
    spec = SparsitySpec.parse(cfg.sparsity)
    selector = get_selector(cfg.selector)
    update = get_update(cfg.weight_update)
    settings = UpdateSettings.from_config(cfg, rows_mesh)
    min_conv = float(cfg.solver.min_converged_fraction)
    judged_update = cfg.weight_update in ("optima", "adam")

    def prune(task: LinearTask) -> LinearResult:
        W, H, H_val = task.weight, task.stats.H, task.H_val
        spec.validate_for(W.shape[1], where=task.full_name)
        t0 = time.perf_counter()
        sel = selector(W, task.stats, spec, **selector_options(cfg, task))
        keep = sel.keep_mask
        W_sel = jnp.where(keep, sel.weight, 0.0)
        W_sel.block_until_ready()
        t1 = time.perf_counter()
        upd = update(W, sel, task.stats, H_val, settings, where=task.full_name)
        W_upd = jnp.where(keep, upd.weight, 0.0)
        W_upd.block_until_ready()
        t2 = time.perf_counter()

        energy = float(jnp.sum((W @ H) * W))
        err_sel = reconstruction_error(W_sel, W, H)
        err_upd = reconstruction_error(W_upd, W, H)
        val_sel = val_upd = None
        if H_val is not None:
            val_sel = reconstruction_error(W_sel, W, H_val)
            val_upd = reconstruction_error(W_upd, W, H_val)

        skip_reason = ""
        if judged_update:
            conv = upd.info.get("converged_fraction")
            if not bool(jnp.all(jnp.isfinite(W_upd))):
                skip_reason = "non-finite update"
            elif conv is not None and conv < min_conv:
                skip_reason = f"only {conv:.0%} of rows converged"
            else:
                judge_sel, judge_upd, where = (
                    (val_sel, val_upd, "validation") if H_val is not None else (err_sel, err_upd, "calibration")
                )
                if not judge_upd < judge_sel:
                    skip_reason = f"{where} error did not drop"
        skipped = bool(skip_reason)
        final = W_sel if skipped else W_upd
        norm = energy if energy > 0 else float("nan")
        val_energy = float(jnp.sum((W @ H_val) * W)) if H_val is not None else None
        row = {
            "layer": task.full_name,
            "block": task.block,
            "linear": task.name,
            "out_features": int(W.shape[0]),
            "in_features": int(W.shape[1]),
            "sparsity": float(1.0 - jnp.mean(keep.astype(jnp.float32))),
            "selector": cfg.selector,
            "update": cfg.weight_update,
            "err_selector": err_sel / norm,
            "err_update": err_upd / norm,
            "ratio": _safe_ratio(err_upd, err_sel),
            "val_err_selector": None if val_sel is None else val_sel / val_energy,
            "val_err_update": None if val_upd is None else val_upd / val_energy,
            "val_ratio": _safe_ratio(val_upd, val_sel),
            "skipped": skipped,
            "skip_reason": skip_reason,
            "seconds_select": t1 - t0,
            "seconds_update": t2 - t1,
            **{
                k: v
                for k, v in upd.info.items()
                if k
                in (
                    "damp",
                    "iterations_mean",
                    "iterations_max",
                    "converged_fraction",
                    "best_lr",
                    "diverged",
                    "fallback",
                )
            },
        }
        for k in ("err_selector", "err_update"):
            if isinstance(row[k], float) and math.isnan(row[k]):
                row[k] = None
        return LinearResult(weight=final, keep_mask=keep, row=row)

    return prune
