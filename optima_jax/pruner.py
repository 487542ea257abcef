"""One linear at a time: selector → mask (+ its own update) → weight update → keep-or-skip safeguard.

`make_pruner(cfg, rows_mesh)` turns a run config into the engine's `Pruner` (LinearTask -> LinearResult).

With refine.method != none (optima_jax.refine, docs/refine.md) the selector's mask is also refined and the update
run on the refined mask; the refined candidate replaces the start mask's update only if its error is lower
(validation error where a validation set exists, else calibration), and the keep-or-skip safeguard then judges
the chosen candidate against the selector's weights as before. The row gains refine, refine_used,
refine_reason, err_update_start / err_update_refined (and val_ versions; normalised as err_update),
refine_changed (mask entries changed), refine_rows, refine_iterations, refine_rho, seconds_refine (the refiner
and the update on its mask, on top of seconds_update) and seconds_refine_admm (its ADMM part).
The step is device-resident (tests/test_device_resident.py): only the report row's scalars come to the host.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp

from optima_jax.engine import LinearResult, LinearTask
from optima_jax.refine import RefineSettings, get_refiner
from optima_jax.selectors import get_selector
from optima_jax.selectors.masks import apply_mask
from optima_jax.sparsity import SparsitySpec
from optima_jax.transfers import fetch
from optima_jax.updates import UpdateResult, UpdateSettings, get_update
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


@jax.jit
def _judge_refined(W, W_ref, keep_sel, keep_ref, H, H_val):
    """The refined candidate's numbers (refine.method != none), fetched with `_judge`'s."""
    out = {
        "err_ref": recon_error(W, W_ref, H),
        "finite_ref": jnp.all(jnp.isfinite(W_ref)),
        "changed": jnp.sum(keep_sel != keep_ref),
    }
    if H_val is not None:
        out["val_ref"] = recon_error(W, W_ref, H_val)
    return out


def make_pruner(cfg, rows_mesh=None):
    spec = SparsitySpec.parse(cfg.sparsity)
    selector = get_selector(cfg.selector)
    update = get_update(cfg.weight_update)
    settings = UpdateSettings.from_config(cfg, rows_mesh)
    refine = RefineSettings.from_config(cfg)
    refiner = None if refine.method == "none" else get_refiner(refine.method)
    # the refiner ends with the exact solve at the update's damp: when the update is that same solve (optima,
    # exact, fixed damp), its result is the refined mask's update and the start mask's update is its start
    reuse_solve = cfg.weight_update == "optima" and settings.method == "exact" and not settings.auto_damp
    min_conv = float(cfg.solver.min_converged_fraction)
    judged_update = cfg.weight_update in ("optima", "adam")
    # the refiner's factorisation of the last H: linears reading the same input (q/k/v, gate/up) are pruned one
    # after another from one H object (optima_jax.engine), so they share its eigendecomposition
    last_factor: dict = {}

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
        judged = {"sel": _judge(W, W_sel, W_upd, keep, H, H_val)}
        if refiner is not None:
            # refine the selector's mask at the damp the update used (auto damp: the start mask's pick), then
            # the configured update on the refined mask; the better of the two updates is judged below
            damp = float(upd.info.get("damp", settings.damp))
            same_h = last_factor.get("H") is H and last_factor.get("damp") == damp
            ref = refiner(
                W,
                sel,
                task.stats,
                spec,
                refine,
                settings,
                damp=damp,
                start_weight=W_upd if reuse_solve else None,
                factor=last_factor["factor"] if same_h else None,
                where=task.full_name,
            )
            last_factor.update(H=H, damp=damp, factor=ref.factor)
            if reuse_solve:
                upd_ref = UpdateResult(ref.selection.weight, dict(upd.info))
            else:
                upd_ref = update(W, ref.selection, task.stats, H_val, settings, where=task.full_name)
            keep_ref = ref.selection.keep_mask
            W_ref = apply_mask(keep_ref, upd_ref.weight)
            judged["ref"] = _judge_refined(W, W_ref, keep, keep_ref, H, H_val)
            W_ref.block_until_ready()
        t3 = time.perf_counter()

        fetched = fetch(judged)
        num = {k: float(v) for k, v in fetched["sel"].items()}
        err_sel, err_upd, energy = num["err_sel"], num["err_upd"], num["energy"]
        val_sel, val_upd = num.get("val_sel"), num.get("val_upd")
        norm = energy if energy > 0 else float("nan")
        val_energy = num.get("val_energy")

        refine_row = {}
        if refiner is not None:
            rn = {k: float(v) for k, v in fetched["ref"].items()}
            err_ref, val_ref = rn["err_ref"], rn.get("val_ref")
            conv = upd_ref.info.get("converged_fraction")
            where = "validation" if H_val is not None else "calibration"
            if rn["changed"] == 0:
                refine_reason = "mask unchanged"
            elif not rn["finite_ref"]:
                refine_reason = "non-finite update on the refined mask"
            elif judged_update and conv is not None and conv < min_conv:
                refine_reason = f"only {conv:.0%} of rows converged on the refined mask"
            elif not ((val_ref < val_upd) if H_val is not None else (err_ref < err_upd)):
                refine_reason = f"{where} error did not drop"
            else:
                refine_reason = ""
            refine_row = {
                "refine": refine.method,
                "refine_used": not refine_reason,
                "refine_reason": refine_reason,
                "err_update_start": err_upd / norm,
                "err_update_refined": err_ref / norm,
                "val_err_update_start": None if val_upd is None else val_upd / val_energy,
                "val_err_update_refined": None if val_ref is None else val_ref / val_energy,
                "refine_changed": int(rn["changed"]),
                "refine_rows": ref.info["rows_refined"],
                "refine_iterations": ref.info["iterations"],
                "refine_rho": ref.info["rho"],
                "seconds_refine": t3 - t2,
                "seconds_refine_admm": ref.info["seconds_admm"],
            }
            if not refine_reason:
                upd, W_upd, keep, err_upd, val_upd = upd_ref, W_ref, keep_ref, err_ref, val_ref
                num["finite"] = rn["finite_ref"]

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
        final, keep = (W_sel, sel.keep_mask) if skipped else (W_upd, keep)
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
            **refine_row,
        }
        for k in ("err_selector", "err_update", "err_update_start", "err_update_refined"):
            if isinstance(row.get(k), float) and math.isnan(row[k]):
                row[k] = None
        return LinearResult(weight=final, keep_mask=keep, row=row)

    return prune
