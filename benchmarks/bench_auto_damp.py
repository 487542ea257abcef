"""Automatic damping on real layers: its cost against one fixed-damp solve, the damp it picks, and the
per-layer error ratios (update / mask only) in and out of the calibration domain for every damp.

Inputs: two captures of the same layers (benchmarks/capture_layers.py), one from the calibration text and one
from another text used as the validation set, e.g.

python benchmarks/capture_layers.py --source "asset:sotu[:0.9]" --nsamples 32 --dest /tmp/optima_layers
python benchmarks/capture_layers.py --source asset:wiki_train --nsamples 16 --dest /tmp/optima_layers_wiki
python benchmarks/bench_auto_damp.py --calib /tmp/optima_layers --val /tmp/optima_layers_wiki \
    --out docs/results/auto_damp_smollm2.md

Each layer: W, H (calibration) and the Wanda keep mask from the calibration capture, H_val from the other.
Times: the minimum over --reps calls after a warm-up call (compilation excluded), exact solver; auto damping
is compared with one solve at --fixed (by default the default `solver.damp`) and with one solve at the damp
it picked. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import time
import numpy as np

from _common import emit_table, layer_pairs, output_error


def ratio(Wn, W0, mask, H):
    """Output error of Wn over that of the mask-only weights, both against the dense W0, under H."""
    return output_error(Wn, W0, H) / output_error(np.where(mask, W0, 0.0), W0, H)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", default="/tmp/optima_layers")
    ap.add_argument("--val", default="/tmp/optima_layers_wiki")
    ap.add_argument(
        "--grid",
        default=None,
        help="damps to choose from, e.g. 0,0.01,0.1,1 (default: solver.auto_damp_grid's default)",
    )
    ap.add_argument(
        "--fixed",
        type=float,
        default=None,
        help="the fixed damp that auto damping is timed against (default: solver.damp's default)",
    )
    ap.add_argument("--reps", type=int, default=3, help="timed calls after one warm-up; the minimum is reported")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    from optima_jax.config import default_config
    from optima_jax.qp import auto_damp_solve, solve_rows

    solver = default_config().solver
    fixed_damp = float(solver.damp) if args.fixed is None else args.fixed
    grid = tuple(solver.auto_damp_grid) if args.grid is None else tuple(float(g) for g in args.grid.split(","))
    lines = [
        f"| layer | fixed damp {fixed_damp:g} s | auto s | auto / fixed | picked | fixed at picked s | "
        "auto / fixed at picked | " + " | ".join(f"ratio in/out @ {g:g}" for g in grid) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(grid),
    ]
    total_fixed = total_auto = total_picked = 0.0
    for layer, W, H, mask, Hv in layer_pairs(args.calib, args.val):
        init = np.where(mask, W, 0.0)

        def fixed():
            r = solve_rows(H, W, mask, damp=fixed_damp, W_init=init)
            np.asarray(r.weight)  # wait for the result (JAX dispatches asynchronously)
            return r

        def auto():
            r = auto_damp_solve(H, W, mask, Hv, grid, W_init=init)
            np.asarray(r.result.weight)
            return r

        def fixed_at_picked():
            r = solve_rows(H, W, mask, damp=picked, W_init=init)
            np.asarray(r.weight)
            return r

        picked = auto().damp
        times = {}
        for name, fn in (("fixed", fixed), ("auto", auto), ("picked", fixed_at_picked)):
            fn()  # compile
            best = float("inf")
            for _ in range(args.reps):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            times[name] = best
        total_fixed += times["fixed"]
        total_auto += times["auto"]
        total_picked += times["picked"]
        cells = []
        for g in grid:
            Wg = np.asarray(solve_rows(H, W, mask, damp=g, W_init=init).weight)
            cells.append(f"{ratio(Wg, W, mask, H):.3f} / {ratio(Wg, W, mask, Hv):.3f}")
        lines.append(
            f"| {layer} | {times['fixed']:.2f} | {times['auto']:.2f} | {times['auto'] / times['fixed']:.2f} | "
            f"{picked:g} | {times['picked']:.2f} | {times['auto'] / times['picked']:.2f} | " + " | ".join(cells) + " |"
        )
        print(lines[-1], flush=True)
    lines.append(
        f"| all | {total_fixed:.2f} | {total_auto:.2f} | {total_auto / max(total_fixed, 1e-9):.2f} | | "
        f"{total_picked:.2f} | {total_auto / max(total_picked, 1e-9):.2f} | " + " | " * len(grid)
    )
    emit_table(lines, args.out)


if __name__ == "__main__":
    main()
