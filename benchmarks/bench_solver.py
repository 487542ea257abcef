"""Solver benchmark: relative excess objective over the float64 optimum, iterations and wall time.

Layers: /tmp/optima_layers/*.npz (keys W, H, keep_mask; see benchmarks/capture_layers.py) when present,
else random-realistic layers. "ours exact" (batched PCG, the default) solves *all* rows of the layer and
its excess is measured on --rows evenly spaced rows; the other solvers run on row subsets (--rows for
direct, --mpax-rows, --mpax-tight-rows) and their times are also given scaled to the whole layer.
Times: wall clock of a second call (compilation excluded), min over --reps calls for ours.
Usage: python benchmarks/bench_solver.py [--rows 64] [--mpax-rows 8] [--mpax-tight-rows 2] [--mpax-tight-eps 1e-4]
"""

import argparse
import glob
import os
import time

import numpy as np

import jax
import jax.numpy as jnp

from optima_jax.qp import solve_rows

from _common import objective, optimum


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


def timed(fn, reps=3):
    """(result, min wall time over reps after one compile call, compile-call time)."""
    t = time.time()
    out = fn()
    jax.block_until_ready(out.weight)
    first = time.time() - t
    best = float("inf")
    for _ in range(reps):
        t = time.time()
        out = fn()
        jax.block_until_ready(out.weight)
        best = min(best, time.time() - t)
    return out, best, first


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--mpax-rows", type=int, default=8)
    ap.add_argument("--mpax-tight-rows", type=int, default=2)
    ap.add_argument("--mpax-tight-eps", type=float, default=1e-4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-mpax", action="store_true")
    a = ap.parse_args()
    paths = sorted(glob.glob("/tmp/optima_layers/*.npz"))
    if paths:
        layers = [(os.path.basename(p)[:-4], *(np.load(p)[k] for k in ("H", "W", "keep_mask"))) for p in paths]
        src = "captured real layers (/tmp/optima_layers)"
    else:
        layers = [
            ("synthetic d=576 (q_proj-like)", *synthetic(576, 576, 2048, 0)),
            ("synthetic d=1536 (down_proj-like)", *synthetic(1536, 576, 4096, 1)),
        ]
        src = "random-realistic synthetic layers (no captured layers available)"
    print(
        f"# source: {src}; device: {jax.devices()[0].device_kind}; excess rows per layer: {a.rows}, "
        f"mpax rows: {a.mpax_rows} at 1e-2 and {a.mpax_tight_rows} at {a.mpax_tight_eps:g}; "
        f"load average at start: {os.getloadavg()[0]:.1f}"
    )
    print(
        "| layer | solver | rows solved | excess total | excess max row | iterations (max) | time s | s/row | "
        "layer time s (scaled) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    totals = {}
    for name, H, W, mask in layers:
        H = H.astype(np.float32)
        W, mask = W.astype(np.float32), mask.astype(bool)
        R = W.shape[0]
        rows = np.linspace(0, R - 1, min(a.rows, R)).astype(int)
        Ws, ms = W[rows], mask[rows]
        best = optimum(H, Ws, ms)

        def report(label, Wn, its, dt, nrows, sub=slice(None)):
            obj = objective(H, Ws[sub], Wn)
            b = best[sub]
            ex = (obj.sum() - b.sum()) / b.sum()
            exr = np.max((obj - b) / np.maximum(b, 1e-12))
            lt = dt / nrows * R
            totals.setdefault(label.split(" (")[0], []).append(lt)
            print(
                f"| {name} | {label} | {nrows} | {ex:.2e} | {exr:.2e} | {int(np.max(its))} | {dt:.3f} | "
                f"{dt / nrows:.2e} | {lt:.2f} |",
                flush=True,
            )

        r, dt, _ = timed(lambda: solve_rows(H, W, mask, method="exact", damp=0.0), a.reps)
        report("ours exact (PCG, all rows)", np.asarray(r.weight)[rows], np.asarray(r.iterations)[rows], dt, R)
        r, dt, _ = timed(lambda: solve_rows(H, W, mask, method="exact", preconditioner="jacobi", damp=0.0), a.reps)
        report("ours exact Jacobi-PCG (all rows)", np.asarray(r.weight)[rows], np.asarray(r.iterations)[rows], dt, R)
        r, dt, _ = timed(lambda: solve_rows(H, Ws, ms, method="direct", damp=0.0), 1)
        report("ours direct", r.weight, r.iterations, dt, len(rows))
        if a.no_mpax:
            continue
        k = min(a.mpax_rows, len(rows))
        sub = slice(0, k)
        r2, dt2, _ = timed(
            lambda: solve_rows(H, Ws[sub], ms[sub], method="rapdhg_sum", eps_abs=1e-2, eps_rel=1e-2, damp=0.0), 1
        )
        report("ours rAPDHG-sum 1e-2 (mpax subset)", r2.weight, r2.iterations, dt2, k, sub)
        Wn, its, dt, _ = mpax_rows(H, Ws[sub], ms[sub], 1e-2)
        report("mpax raPDHG 1e-2 (vmap rows)", Wn, its, dt, k, sub)
        kt = min(a.mpax_tight_rows, len(rows))
        subt = slice(0, kt)
        r2, dt2, _ = timed(
            lambda: solve_rows(
                H, Ws[subt], ms[subt], method="rapdhg_sum", eps_abs=a.mpax_tight_eps, eps_rel=a.mpax_tight_eps, damp=0.0
            ),
            1,
        )
        report(f"ours rAPDHG-sum {a.mpax_tight_eps:g} (tight subset)", r2.weight, r2.iterations, dt2, kt, subt)
        Wn, its, dt, _ = mpax_rows(H, Ws[subt], ms[subt], a.mpax_tight_eps)
        report(f"mpax raPDHG {a.mpax_tight_eps:g} (vmap rows)", Wn, its, dt, kt, subt)
    print()
    print("| solver | total layer time over all layers, s (scaled from subsets where marked) |")
    print("|---|---|")
    for k, v in totals.items():
        print(f"| {k} | {sum(v):.2f} |")


if __name__ == "__main__":
    main()
