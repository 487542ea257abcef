"""Solver benchmark: relative excess objective over the float64 optimum, iterations and wall time.

Layers: /tmp/optima_layers/*.npz (keys W, H, keep_mask) when present, else random-realistic layers
(correlated activations with heavy channel scales, outliers and dead channels; Wanda 50% masks).
Rows are subsampled (--rows, --mpax-rows, --mpax-tight-rows) to keep the run to minutes.
Usage: python benchmarks/bench_solver.py [--rows 64] [--mpax-rows 16] [--mpax-tight-rows 4]
"""
import argparse
import glob
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax
import jax.numpy as jnp

from optima_jax.qp import solve_rows


def synthetic(n, out, T, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(T, n)) @ (np.eye(n) + 2 * rng.normal(size=(n, n)) / np.sqrt(n))
    scale = np.exp(rng.normal(size=n))
    scale[rng.choice(n, 4, replace=False)] *= 30
    X = X * scale
    X[:, rng.choice(n, 3, replace=False)] = 0
    H = (X.T @ X).astype(np.float32)
    W = (rng.normal(size=(out, n)) * 0.05).astype(np.float32)
    s = np.abs(W) * np.sqrt(np.diag(H))[None]
    return H, W, s > np.median(s, axis=1, keepdims=True)


def optimum(H, W, mask):
    H = H.astype(np.float64)
    dead = np.diag(H) <= 0
    obj = np.zeros(W.shape[0])
    for j in range(W.shape[0]):
        f, s = mask[j] & ~dead, ~mask[j]
        d = np.zeros(H.shape[0])
        d[s] = -W[j, s]
        if f.any():
            d[f] = np.linalg.solve(H[np.ix_(f, f)], -H[np.ix_(f, s)] @ d[s])
        obj[j] = 0.5 * d @ H @ d
    return obj


def objective(H, W, Wn):
    d = np.asarray(Wn, np.float64) - W
    return 0.5 * np.sum((d @ H.astype(np.float64)) * d, axis=1)


def mpax_rows(H, W, mask, eps, limit=100_000):
    """The reference OPTIMA usage: mpax raPDHG vmapped over rows, box QP plus one inactive dummy row."""
    import mpax

    n = H.shape[0]
    Q = jnp.asarray(H)
    c = jnp.zeros(n)
    A = jnp.zeros((0, n))
    b = jnp.zeros(0)
    G = jnp.zeros((1, n)).at[0, 0].set(1.0)
    h = jnp.array([-1e3])
    lo = jnp.asarray(np.where(mask, -np.inf, -W), jnp.float32)
    hi = jnp.asarray(np.where(mask, np.inf, -W), jnp.float32)
    solver = mpax.raPDHG(eps_abs=eps, eps_rel=eps, iteration_limit=limit)
    f = jax.vmap(lambda l, u: solver.optimize(mpax.create_qp(Q, c, A, b, G, h, l, u, use_sparse_matrix=False)))
    t = time.time()
    r = f(lo, hi)
    r.primal_solution.block_until_ready()
    first = time.time() - t
    t = time.time()
    r = f(lo, hi)
    r.primal_solution.block_until_ready()
    Wn = np.where(mask, W + np.asarray(r.primal_solution), 0.0)
    return Wn, np.asarray(r.iteration_count), time.time() - t, first


def timed(fn, reps=2):
    out = None
    first = None
    for i in range(reps):
        t = time.time()
        out = fn()
        jax.block_until_ready(out.weight)
        dt = time.time() - t
        first = dt if first is None else first
    return out, dt, first


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--mpax-rows", type=int, default=16)
    ap.add_argument("--mpax-tight-rows", type=int, default=4)
    ap.add_argument("--mpax-tight-eps", type=float, default=1e-5)
    ap.add_argument("--no-mpax", action="store_true")
    a = ap.parse_args()
    paths = sorted(glob.glob("/tmp/optima_layers/*.npz"))
    if paths:
        layers = [(os.path.basename(p)[:-4], *(np.load(p)[k] for k in ("H", "W", "keep_mask"))) for p in paths]
        src = "captured real layers (/tmp/optima_layers)"
    else:
        layers = [("synthetic d=576 (q_proj-like)", *synthetic(576, 576, 2048, 0)),
                  ("synthetic d=1536 (down_proj-like)", *synthetic(1536, 576, 4096, 1))]
        src = "random-realistic synthetic layers (no captured layers available)"
    print(f"# source: {src}; device: {jax.devices()[0].device_kind}; rows per layer: {a.rows}, "
          f"mpax rows: {a.mpax_rows} at 1e-2 and {a.mpax_tight_rows} at {a.mpax_tight_eps:g}")
    print("| layer | solver | rows | excess total | excess max row | iterations (max) | time s | s/row |")
    print("|---|---|---|---|---|---|---|---|")
    for name, H, W, mask in layers:
        H = H.astype(np.float32)
        rows = np.linspace(0, W.shape[0] - 1, min(a.rows, W.shape[0])).astype(int)
        Ws, ms = W[rows].astype(np.float32), mask[rows].astype(bool)
        best = optimum(H, Ws, ms)

        def report(label, Wn, its, dt, nrows, sub=slice(None)):
            obj = objective(H, Ws[sub], Wn)
            b = best[sub]
            ex = (obj.sum() - b.sum()) / b.sum()
            exr = np.max((obj - b) / np.maximum(b, 1e-12))
            print(f"| {name} | {label} | {nrows} | {ex:.2e} | {exr:.2e} | {int(np.max(its))} | {dt:.3f} | {dt / nrows:.2e} |",
                  flush=True)

        r, dt, _ = timed(lambda: solve_rows(H, Ws, ms, method="exact"))
        report("ours exact", r.weight, r.iterations, dt, len(rows))
        r, dt, _ = timed(lambda: solve_rows(H, Ws, ms, method="rapdhg", eps_abs=1e-2, eps_rel=1e-2))
        report("ours rAPDHG 1e-2", r.weight, r.iterations, dt, len(rows))
        if a.no_mpax:
            continue
        k = min(a.mpax_rows, len(rows))
        sub = slice(0, k)
        r2, dt2, _ = timed(lambda: solve_rows(H, Ws[sub], ms[sub], method="rapdhg", eps_abs=1e-2, eps_rel=1e-2))
        report("ours rAPDHG 1e-2 (mpax subset)", r2.weight, r2.iterations, dt2, k, sub)
        Wn, its, dt, _ = mpax_rows(H, Ws[sub], ms[sub], 1e-2)
        report("mpax raPDHG 1e-2 (vmap rows)", Wn, its, dt, k, sub)
        kt = min(a.mpax_tight_rows, len(rows))
        subt = slice(0, kt)
        Wn, its, dt, _ = mpax_rows(H, Ws[subt], ms[subt], a.mpax_tight_eps)
        report(f"mpax raPDHG {a.mpax_tight_eps:g} (vmap rows)", Wn, its, dt, kt, subt)


if __name__ == "__main__":
    main()
