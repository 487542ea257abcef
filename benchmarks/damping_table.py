"""The default update (exact solver, damp 0.1) against the undamped QP (damp 0, the paper's objective) and the
selector alone (and damp 0.01 / 1 where measured), in every cell of the damping study that bench_quality.py has finished: one markdown table per
results file, rendered from the JSON files.

python benchmarks/damping_table.py docs/results/smollm2_table1.json docs/results/smollm2_wikicalib.json \
    docs/results/gemma3_270m_table1.json docs/results/gemma3_270m_wikicalib.json --out docs/results/damping_cells.md

A cell is (results file, regime, selector) with the three rows `<selector>`, `<selector>+optima` and
`<selector>+optima@solver.damp=0`; cells missing any of them are listed as not measured. Percentages are
relative to the selector alone.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from capture_layers import emit_table

SELECTORS = ("wanda", "sparsegpt")


def domain(source: str) -> str:
  """Text family of a source spec for the in/out-of-domain label: 'asset:wiki_train' and 'asset:wiki_test'
  -> 'wiki', 'asset:sotu[:0.9]' -> 'sotu'."""
  name = source.split(":", 1)[-1].split("[")[0]
  for suffix in ("_train", "_test", "_validation"):
    name = name.removesuffix(suffix)
  return name


def pct(x: float, ref: float) -> str:
  return f"{100.0 * (x - ref) / ref:+.1f}%"


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("results", nargs="+", help="bench_quality.py JSON files")
  ap.add_argument("--regimes", default="0.5,2:4/mlp", help="the damping study's regimes")
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  lines = ["| model | calibration | regime | selector | eval text | domain | selector alone | + OPTIMA damp 0 (paper's QP)"
           " | damp 0.01 | damp 0.1 (default) | damp 1 | default vs damp 0 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  missing = []
  wins = {"same": [0, 0], "other": [0, 0]}     # [default lower, pairs]
  cell_wins = [0, 0]                             # [default lower on the mean over eval texts, cells]
  log_ratios = []                                # log(default / damp 0) per (cell, text) pair
  small_wins = [0, 0]                            # [damp 0.01 lower than damp 0, pairs with a damp 0.01 row]
  for path in args.results:
    data = json.loads(Path(path).read_text())
    setup = data["setup"]
    by = {(c["regime"], c["row"]): c for c in data["cells"]}
    model = setup["model"].split(":")[-1]
    for regime in args.regimes.split(","):
      for sel in SELECTORS:
        names = (sel, f"{sel}+optima@solver.damp=0", f"{sel}+optima")
        cells = [by.get((regime, n)) for n in names]
        extra = [by.get((regime, f"{sel}+optima@solver.damp={d}")) for d in ("0.01", "1")]
        if any(c is None for c in cells):
          if cells[0] is not None or cells[2] is not None:
            missing.append(f"{model}, calibration {setup['calib']}, {regime}, {sel}")
          continue
        cell_logs = []
        for text in setup["eval"]:   # rows in names' order
          alone, undamped, default = (c["ppl"][text] for c in cells)
          small, large = (f"{c['ppl'][text]:.2f} ({pct(c['ppl'][text], alone)})" if c else "–" for c in extra)
          dom = "same" if domain(text) == domain(setup["calib"]) else "other"
          wins[dom][0] += default < undamped
          wins[dom][1] += 1
          log_ratios.append(math.log(default / undamped))
          cell_logs.append(log_ratios[-1])
          if extra[0] is not None:
            small_wins[0] += extra[0]["ppl"][text] < undamped
            small_wins[1] += 1
          lines.append(f"| {model} | {setup['calib']} | {regime} | {sel} | {text} | {dom} | {alone:.2f} | "
                       f"{undamped:.2f} ({pct(undamped, alone)}) | {small} | {default:.2f} ({pct(default, alone)}) | {large} | "
                       f"{pct(default, undamped)} |")
        cell_wins[0] += sum(cell_logs) < 0
        cell_wins[1] += 1
  lines.append("")
  lines.append(f"The default is lower than the undamped update in {wins['other'][0]} of {wins['other'][1]} cells on the "
               f"text of the other domain and in {wins['same'][0]} of {wins['same'][1]} on held-out text of the "
               "calibration domain.")
  if cell_wins[1]:
    lines.append(f"Per cell (geometric mean over its eval texts) the default is lower in {cell_wins[0]} of "
                 f"{cell_wins[1]} cells.")
  if log_ratios:
    lines.append(f"Geometric mean of default / damp 0 over all {len(log_ratios)} pairs: "
                 f"{math.exp(sum(log_ratios) / len(log_ratios)):.4f}.")
  if small_wins[1]:
    lines.append(f"Damp 0.01 is lower than damp 0 in {small_wins[0]} of the {small_wins[1]} (cell, text) pairs where "
                 "it was measured.")
  if missing:
    lines.append("Not measured yet (no damp 0 row): " + "; ".join(missing) + ".")
  emit_table(lines, args.out)


if __name__ == "__main__":
  main()
