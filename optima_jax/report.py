"""Per-linear report: JSON, CSV, an end-of-run summary table, and the Figure 2 ratio plot.

Each row describes one pruned linear:
  layer              HF weight name, e.g. model.layers.3.mlp.down_proj.weight
  err_selector       ||X(W_sel − W)ᵀ||² / ||XWᵀ||² on calibration tokens (selector's weights, mask applied)
  err_update         the same for the weight update's result (before the keep-or-skip safeguard)
  ratio              err_update / err_selector: the paper's Figure 2 ratio (< 1 means the update helped)
  val_ratio          the same ratio on validation tokens (when a validation set exists): > 1 means overfitting
  skipped            true when the safeguard kept the selector's weights (reason in skip_reason)
  iterations_mean/max, converged_fraction, damp, seconds_select, seconds_update
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

from optima_jax.fileio import atomic_write, atomic_write_text
from optima_jax.errors import OptimaError, require_extra

log = logging.getLogger("optima_jax")

COLUMNS = [
    "layer",
    "block",
    "linear",
    "out_features",
    "in_features",
    "sparsity",
    "selector",
    "update",
    "err_selector",
    "err_update",
    "ratio",
    "val_err_selector",
    "val_err_update",
    "val_ratio",
    "skipped",
    "skip_reason",
    "damp",
    "iterations_mean",
    "iterations_max",
    "converged_fraction",
    "seconds_select",
    "seconds_update",
]
# with refine.method set (optima_jax/refine.py)
REFINE_COLUMNS = [
    "refine",
    "refine_used",
    "refine_reason",
    "err_update_start",
    "err_update_refined",
    "val_err_update_start",
    "val_err_update_refined",
    "refine_changed",
    "refine_rows",
    "refine_iterations",
    "seconds_refine",
]
COLUMNS += REFINE_COLUMNS


def write_reports(out: Path, rows: list[dict], timings: dict | None = None, perplexity: dict | None = None):
    """Write report.json (with `perplexity`: {"dense" | "pruned" | ...: ppl, "source": eval text}, if measured),
    report.csv and report.png into `out`."""
    out = Path(out)
    atomic_write_text(
        out / "report.json",
        json.dumps({"linears": rows, "timings": timings or {}, "perplexity": perplexity or {}}, indent=1, default=str),
    )
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(out / "report.csv", buf.getvalue())
    if rows:
        try:
            plot_ratios(rows, out / "report.png")
        except OptimaError as e:  # matplotlib is an extra: the CSV is the report, the plot is a view of it
            log.warning("report.png not written: %s", e)


def plot_ratios(rows: list[dict], path: Path, title: str | None = None):
    """Bar plot of the per-linear ratio (update error / selector error), log scale, 1.0 marked."""
    matplotlib = require_extra("matplotlib", "plots", "the per-linear ratio plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['block']}.{r['linear'].split('.')[-1]}" for r in rows]
    ratios = [r.get("ratio") or float("nan") for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 0.12 * len(rows)), 4))
    colors = ["tab:gray" if r.get("skipped") else "tab:blue" for r in rows]
    ax.bar(range(len(rows)), ratios, color=colors, width=0.8, label="calibration tokens")
    if any(r.get("val_ratio") is not None for r in rows):
        ax.plot(
            range(len(rows)), [r.get("val_ratio") or float("nan") for r in rows], "r.", ms=4, label="validation tokens"
        )
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("error after update / selector error")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=90, fontsize=5)
    ax.set_title(title or "OPTIMA per-layer error ratio (Figure 2); gray = kept selector weights")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    try:  # via a temporary file: a failed save (a full disk) leaves any previous figure as it was
        atomic_write(
            path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".").lower() or "png", dpi=130), binary=True
        )
    finally:
        plt.close(fig)


def _fmt(x, digits=4):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def summary_table(rows: list[dict], timings: dict, ppl: dict | None = None) -> str:
    """A plain-text end-of-run summary: per linear kind, mean ratio and skips; then timings and perplexity."""
    from collections import defaultdict

    by_kind = defaultdict(list)
    for r in rows:
        by_kind[r["linear"]].append(r)
    lines = [f"{'linear':<18} {'count':>5} {'mean ratio':>10} {'max ratio':>9} {'val ratio':>9} {'skipped':>7}"]
    for kind, rs in by_kind.items():
        ratios = [r["ratio"] for r in rs if r.get("ratio") is not None]
        vr = [r["val_ratio"] for r in rs if r.get("val_ratio") is not None]
        lines.append(
            f"{kind:<18} {len(rs):>5} {_fmt(sum(ratios) / len(ratios) if ratios else None):>10} "
            f"{_fmt(max(ratios) if ratios else None):>9} "
            f"{_fmt(sum(vr) / len(vr) if vr else None):>9} {sum(bool(r['skipped']) for r in rs):>7}"
        )
    if timings:
        lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items() if isinstance(v, float)))
    if ppl:
        lines.append("perplexity: " + ", ".join(f"{k} {_fmt(v, 5)}" for k, v in ppl.items()))
    return "\n".join(lines)
