"""The paper's Figure 2 from a bench_quality.py results file: per pruned linear, the ratio of the output error
after the update to the selector's error (trace(ΔW H ΔWᵀ) on the calibration tokens), one panel per
row with an update, one line per linear type, x = block index. A ratio below 1 means the update helped.

python benchmarks/plot_ratios.py docs/results/smollm2_table1.json --out docs/results/smollm2_ratios.png
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def ratio_series(cell: dict) -> dict[str, list[tuple[int, float]]]:
    """{linear type: [(block, ratio), ...]} of one cell; skipped layers count as ratio 1 (weights kept)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for lin in cell.get("linears", []):
        m = re.search(r"layers\.(\d+)\.(.+)\.weight$", lin["layer"])
        if not m or lin["ratio"] is None:
            continue
        ratio = 1.0 if lin["skipped"] else float(lin["ratio"])
        out.setdefault(m.group(2), []).append((int(m.group(1)), ratio))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(Path(args.results).read_text())
    cells = [c for c in res["cells"] if "+" in c["row"] and c.get("linears")]
    if not cells:
        raise SystemExit(f"error: {args.results} has no cell with an update (+optima/+adam) and per-linear rows")
    cols = min(3, len(cells))
    rows = -(-len(cells) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False, sharey=True)
    for ax, cell in zip(axes.flat, cells):
        for name, pts in sorted(ratio_series(cell).items()):
            pts.sort()
            ax.plot([b for b, _ in pts], [r for _, r in pts], marker=".", lw=1, label=name)
        ax.axhline(1.0, color="k", lw=0.6, ls="--")
        ax.set_title(f"{cell['row']}  ({cell['regime']})", fontsize=9)
        ax.set_xlabel("block")
        ax.set_ylim(0, 1.15)
    for ax in axes[:, 0]:
        ax.set_ylabel("error ratio (update / selector)")
    for ax in list(axes.flat)[len(cells) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{res['setup']['model']}: per-layer error ratio on calibration tokens", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({len(cells)} panels)")


if __name__ == "__main__":
    main()
