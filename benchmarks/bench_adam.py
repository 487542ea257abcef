"""ADAM vs OPTIMA on real layers (the paper's Table 7 at layer level): per layer, the error ratio
(update / mask only) of ADAM at every lr of the paper's grid and several step counts, against the exact
OPTIMA solve, in the calibration domain (H) and outside it (H_val); ADAM runs whose error ends above the
start (or non-finite) are marked as diverged.

Inputs are captures from benchmarks/capture_layers.py (W, H, Wanda keep mask) from the calibration text, and
the same layers captured from another text for H_val:

python benchmarks/bench_adam.py --calib /tmp/optima_layers --val /tmp/optima_layers_wiki \
    --steps 100,500,2000 --rows 64 --out docs/results/adam_layers_smollm2.md

ADAM's rows are independent problems (its loss is a sum over rows and its updates are elementwise), so a
random subset of --rows output rows per layer (seeded) measures the same ratios at a fraction of the cost.
"""

from __future__ import annotations

import argparse
import numpy as np

from _common import emit_table, layer_pairs, output_error


err = output_error


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", default="/tmp/optima_layers")
    ap.add_argument("--val", default="/tmp/optima_layers_wiki")
    ap.add_argument("--steps", default="100,500,2000")
    ap.add_argument("--lrs", default="1e-2,1e-3,1e-4,1e-5")
    ap.add_argument("--rows", type=int, default=64, help="output rows per layer (random, seeded); 0 = all")
    ap.add_argument("--damps", default="0,0.1", help="OPTIMA (exact solver) damps to compare with")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    import jax.numpy as jnp

    from optima_jax.qp import solve_rows
    from optima_jax.updates.adam import adam_runs

    steps = [int(s) for s in args.steps.split(",")]
    lrs = tuple(float(x) for x in args.lrs.split(","))
    damps = [float(d) for d in args.damps.split(",")]
    head = (
        ["layer"] + [f"OPTIMA damp {d:g}" for d in damps] + [f"ADAM {s} steps lr {lr:g}" for s in steps for lr in lrs]
    )
    lines = [
        "Cells: error ratio update / mask-only, in domain (H) / out of domain (H_val); "
        "**x** marks an ADAM run that diverged (final error above the start or non-finite).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, W, H, mask, Hv in layer_pairs(args.calib, args.val):
        if args.rows and args.rows < W.shape[0]:
            idx = np.sort(np.random.default_rng(0).choice(W.shape[0], args.rows, replace=False))
            W, mask = W[idx], mask[idx]
        W0 = np.where(mask, W, 0.0).astype(np.float32)
        base, base_v = err(W0, W, H), err(W0, W, Hv)
        cells = []
        for d in damps:
            Wn = np.asarray(solve_rows(H, W, mask, damp=d, W_init=W0).weight)
            cells.append(f"{err(Wn, W, H) / base:.3f} / {err(Wn, W, Hv) / base_v:.3f}")
        for s in steps:
            # every lr of the grid in one vmapped run, exactly as the update does (adam_update keeps the best)
            Vs, _, _ = adam_runs(
                jnp.asarray(W),
                jnp.asarray(mask),
                jnp.asarray(H, jnp.float32),
                jnp.asarray(W0),
                jnp.asarray(lrs, jnp.float32),
                s,
            )
            for V in np.asarray(Vs):
                e = err(V, W, H)
                diverged = not np.isfinite(e) or e > base  # adam_update's rule: ended above the start
                cells.append(
                    (f"{e / base:.3f} / {err(V, W, Hv) / base_v:.3f}" if np.isfinite(e) else "nan")
                    + (" **x**" if diverged else "")
                )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    emit_table(lines, args.out)


if __name__ == "__main__":
    main()
