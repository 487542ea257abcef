"""How far from the undamped optimum the paper's rAPDHG setting stops, against the Σxᵀx construction.

python benchmarks/paper_excess_layers.py [capture dir] [--rows 32]

Captures: .npz files written by optima_jax.capture (W, H = Σxᵀx, keep_mask, n_tokens); the default directory
is the slow tests' captures (~/.cache/optima_jax/test_layers). Excess = relative excess of ½ΔᵀHΔ over a
float64 direct solve, per row; the time includes compilation.
"""

from __future__ import annotations

import argparse
import glob
import os
import time
from pathlib import Path

import numpy as np

from _common import objective, optimum


def main():
    cache = Path(os.environ.get("OPTIMA_JAX_CACHE", Path.home() / ".cache" / "optima_jax")) / "test_layers"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("captures", nargs="?", default=str(cache))
    ap.add_argument("--rows", type=int, default=32, help="evenly spaced output rows per layer")
    ap.add_argument("--eps", type=float, default=1e-2)
    args = ap.parse_args()
    from optima_jax.qp import solve_rows

    print("| layer | rows | setting | mean excess over the undamped optimum | max | iterations median / max | s |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(glob.glob(os.path.join(args.captures, "*.npz"))):
        z = np.load(path)
        name = Path(path).stem.split("__")[-1]
        rows = np.unique(np.linspace(0, z["W"].shape[0] - 1, args.rows).round().astype(int))
        H, W, mask = z["H"], z["W"][rows], z["keep_mask"][rows].astype(bool)
        opt = optimum(H, W, mask)
        for label, method in ((f"rapdhg {args.eps:g} (paper)", "rapdhg"), (f"rapdhg_sum {args.eps:g}", "rapdhg_sum")):
            t = time.perf_counter()
            r = solve_rows(
                H, W, mask, method=method, n_tokens=int(z["n_tokens"]), eps_abs=args.eps, eps_rel=args.eps, damp=0.0
            )
            secs = time.perf_counter() - t
            ex = (objective(H, W, r.weight) - opt) / opt
            it = np.asarray(r.iterations)
            print(
                f"| {name} | {len(rows)} | {label} | {100 * ex.mean():+.3f}% | {100 * ex.max():+.3f}% "
                f"| {int(np.median(it))} / {it.max()} | {secs:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
