"""ADAM weight update under a fixed mask (the OPTIMA paper's Table 7 ablation).

Minimises the layer reconstruction error  E(Ŵ) = ||X(W − Ŵ)ᵀ||² = tr((W − Ŵ) H (W − Ŵ)ᵀ)  with H = Σ xᵀx
(no activations needed), over Ŵ = keep ⊙ V (pruned entries stay exactly zero), with ``optax.adam``
and a linear decay of the learning rate to 0 over ``steps`` (full batch: H is the whole calibration
set). Every lr in ``lrs`` is run independently (vmapped) and the lowest final error wins.

Choices: steps default 1000 (the paper does not fix it in what we know; configurable); ``damp`` adds
damp·mean(diag H)·I to H for the objective (0 = the plain reconstruction error); the loss is divided by
mean(diag H)·out so that its scale does not depend on the layer (ADAM is nearly scale invariant but
its epsilon is not). A run "diverged" if its final error is non-finite or larger than the starting one;
if every run diverged the start is returned unchanged (info["fallback"] = True).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optima_jax.config import default_config
from optima_jax.errors import OptimaError
from optima_jax.transfers import fetch, to_device

HIGHEST = jax.lax.Precision.HIGHEST


class AdamUpdateError(OptimaError):
    """Bad input to the ADAM update."""


@jax.jit
def recon_error(W_dense, W_new, H):
    """tr((W - Ŵ) H (W - Ŵ)ᵀ): scalar (on the device)."""
    D = W_dense - W_new
    return jnp.sum(jnp.matmul(D, H, precision=HIGHEST) * D)


@partial(jax.jit, static_argnums=1)
def _pick(Vs, i):
    return Vs[i]


@partial(jax.jit, static_argnames=("steps",))
def adam_runs(W_dense, keep, H_true, init, lrs, damp, steps):
    """Adam from `init` at every lr (vmapped) on the objective with H + damp·mean(diag H)·I; returns the final
    weights per lr, their errors and the start's error, both with the undamped H."""
    n = H_true.shape[0]
    H = H_true + damp * jnp.mean(jnp.diagonal(H_true)) * jnp.eye(n, dtype=H_true.dtype)
    Hs = 0.5 * (H + H.T) / (jnp.mean(jnp.diagonal(H)) * W_dense.shape[0])
    keepf = keep.astype(W_dense.dtype)

    def grad(V):
        # d/dV tr((W − V⊙k) Hs (W − V⊙k)ᵀ) = 2 ((V⊙k − W) Hs) ⊙ k  (Hs symmetric): one matmul per step
        return 2.0 * jnp.matmul(V * keepf - W_dense, Hs, precision=HIGHEST) * keepf

    def one(lr):
        sched = optax.linear_schedule(lr, 0.0, steps)
        opt = optax.adam(sched)
        st = opt.init(init)

        def step(carry, _):
            V, st = carry
            g = grad(V)
            upd, st = opt.update(g, st, V)
            return (optax.apply_updates(V, upd), st), None

        (V, _), _ = jax.lax.scan(step, (init, st), None, length=steps)
        V = V * keepf
        return V, recon_error(W_dense, V, H_true)

    Vs, errs = jax.vmap(one)(lrs)
    return Vs, errs, recon_error(W_dense, init, H_true)


def adam_update(
    W_dense, keep_mask, H, *, lrs=None, steps: int | None = None, init=None, damp: float = 0.0, where: str = "layer"
):
    """W_dense (out, in) float32, keep_mask bool (out, in), H (in, in) = Σ xᵀx. ``lrs`` / ``steps`` left as
    None are the run defaults (``default_config().adam``); ``damp`` 0 is the undamped objective.

    Returns (weight (out, in) float32 with pruned entries exactly 0, info) where info has
    ``errors`` {lr: final error}, ``init_error``, ``best_lr``, ``error``, ``diverged`` {lr: bool},
    ``unstable`` (any diverged) and ``fallback``. Errors are tr(ΔW H ΔWᵀ) with the undamped H.
    """
    if lrs is None or steps is None:
        run = default_config().adam
        lrs = tuple(run.lrs) if lrs is None else lrs
        steps = int(run.steps) if steps is None else steps
    W_dense = to_device(W_dense)
    W_dense = W_dense.astype(jnp.float32 if W_dense.dtype != jnp.float64 else jnp.float64)
    keep = to_device(keep_mask).astype(bool)
    H = to_device(H).astype(W_dense.dtype)
    if W_dense.ndim != 2 or keep.shape != W_dense.shape:
        raise AdamUpdateError(f"{where}: keep_mask shape {tuple(keep.shape)} != weight shape {tuple(W_dense.shape)}")
    if H.shape != (W_dense.shape[1], W_dense.shape[1]):
        raise AdamUpdateError(f"{where}: H shape {tuple(H.shape)} does not match weight shape {tuple(W_dense.shape)}")
    if steps < 1 or not lrs:
        raise AdamUpdateError(f"{where}: adam update needs steps >= 1 and at least one lr")
    init = W_dense * keep if init is None else to_device(init).astype(W_dense.dtype) * keep
    lrs_a = to_device(np.asarray(lrs, W_dense.dtype))
    Vs, errs_d, init_d = adam_runs(
        W_dense, keep, H, init, lrs_a, to_device(np.asarray(damp, W_dense.dtype)), int(steps)
    )
    errs, init_err = fetch((errs_d, init_d))  # the len(lrs) errors and the start's: scalars to the host
    errs, init_err = [float(e) for e in errs], float(init_err)
    diverged = {float(lr): (not math.isfinite(e)) or e > init_err for lr, e in zip(lrs, errs)}
    finite = [(e, i) for i, e in enumerate(errs) if math.isfinite(e)]
    best_e, best_i = min(finite) if finite else (float("inf"), 0)
    fallback = not finite or best_e > init_err
    weight = init if fallback else _pick(Vs, best_i)
    info = {
        "errors": {float(lr): e for lr, e in zip(lrs, errs)},
        "init_error": init_err,
        "best_lr": None if fallback else float(lrs[best_i]),
        "error": init_err if fallback else best_e,
        "diverged": diverged,
        "unstable": any(diverged.values()),
        "fallback": fallback,
        "steps": int(steps),
    }
    return weight, info
