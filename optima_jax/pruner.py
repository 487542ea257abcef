"""One linear at a time: selector → mask (+ its own update) → weight update → keep-or-skip safeguard.

`make_pruner(cfg, rows_mesh)` turns a run config into the engine's `Pruner` (LinearTask -> LinearResult).
The step is device-resident (tests/test_device_resident.py): only the report row's scalars come to the host.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp

from optima_jax.engine import LinearResult, LinearTask
from optima_jax.selectors import get_selector
from optima_jax.selectors.masks import apply_mask
from optima_jax.sparsity import SparsitySpec
from optima_jax.transfers import fetch
from optima_jax.updates import UpdateSettings, get_update
from optima_jax.updates.adam import recon_error


def selector_options(cfg, task: LinearTask) -> dict:
    if cfg.selector == "external":
        return dict(path=cfg.selector_options.mask_file, name=task.full_name, where=task.full_name)
    return dict(where=task.full_name)


def _safe_ratio(a, b):
    return None if b is None or a is None or b <= 0 else a / b


@jax.jit
def _judge(W, W_sel, W_upd, keep, H, H_val):
    """Every number the safeguard and the report row need, as device scalars (fetched together)."""
    out = {
        "energy": recon_error(W, jnp.zeros_like(W), H),
        "err_sel": recon_error(W, W_sel, H),
        "err_upd": recon_error(W, W_upd, H),
        "finite": jnp.all(jnp.isfinite(W_upd)),
        "sparsity": 1.0 - jnp.mean(keep.astype(jnp.float32)),
    }
    if H_val is not None:
        out["val_sel"] = recon_error(W, W_sel, H_val)
        out["val_upd"] = recon_error(W, W_upd, H_val)
        out["val_energy"] = recon_error(W, jnp.zeros_like(W), H_val)
    return out


def make_pruner(cfg, rows_mesh=None):
    spec = SparsitySpec.parse(cfg.sparsity)
    selector = get_selector(cfg.selector)
    update = get_update(cfg.weight_update)
    settings = UpdateSettings.from_config(cfg, rows_mesh)
    min_conv = float(cfg.solver.min_converged_fraction)
    judged_update = cfg.weight_update in ("optima", "adam")

    def prune(task: LinearTask) -> LinearResult:
        """One linear, device-resident: W, H, H_val, the mask and the new weights never leave the device;
        the report's numbers come back as one fetch of scalars (optima_jax.transfers)."""
        W, H, H_val = task.weight, task.stats.H, task.H_val
        spec.validate_for(W.shape[1], where=task.full_name)
        t0 = time.perf_counter()
        sel = selector(W, task.stats, spec, **selector_options(cfg, task))
        keep = sel.keep_mask
        W_sel = apply_mask(keep, sel.weight)
        W_sel.block_until_ready()
        t1 = time.perf_counter()
        upd = update(W, sel, task.stats, H_val, settings, where=task.full_name)
        W_upd = apply_mask(keep, upd.weight)
        W_upd.block_until_ready()
        t2 = time.perf_counter()

        num = {k: float(v) for k, v in fetch(_judge(W, W_sel, W_upd, keep, H, H_val)).items()}
        err_sel, err_upd, energy = num["err_sel"], num["err_upd"], num["energy"]
        val_sel, val_upd = num.get("val_sel"), num.get("val_upd")

        skip_reason = ""
        if judged_update:
            conv = upd.info.get("converged_fraction")
            if not num["finite"]:
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
        val_energy = num.get("val_energy")
        row = {
            "layer": task.full_name,
            "block": task.block,
            "linear": task.name,
            "out_features": int(W.shape[0]),
            "in_features": int(W.shape[1]),
            "sparsity": num["sparsity"],
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
