"""Issue 30's results table: per model and regime, held-out perplexity of the five rows (SparseGPT's own update,
Wanda + OPTIMA, SparseGPT + OPTIMA, refined from Wanda, refined from SparseGPT), each refined row against
SparseGPT + OPTIMA with the regime's goal, and the refinement's cost against the OPTIMA update.

python benchmarks/refine_table.py --out docs/results/refine_summary.md

Cells come from docs/results/refine_<model>*.json (bench_quality.py, commands in docs/refine.md); the cells of
docs/results/refine_val_<model>.json (the same rows run with --validation) get a table of their own. A row missing
there is taken from the model's Table 1 file (docs/results/<model>_table1.json: the same calibration, evaluation
and default damp, `@solver.damp=0.01` rows; marked †) when present; otherwise the cell says "not run".
Cost: Σ seconds_refine / Σ seconds_update over the cell's linears (the refiner plus the exact solve on its mask,
against the OPTIMA update on the selector's mask, both in the same run), else the cell's refine_s / update_s
(cells from before refine_s existed: (prune_s − select_s − update_s) / update_s).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import emit_table

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
MODELS = {"smollm2": "SmolLM2-135M", "gemma3_270m": "Gemma 3 270M"}
REGIMES = ("0.5", "0.6", "0.7", "2:4", "2:4/mlp")
REFINE = "@refine.method=alps"
# column -> (row name in refine_<model>.json, the same row's name in <model>_table1.json or None)
ROWS = {
    "SparseGPT own": ("sparsegpt", "sparsegpt"),
    "Wanda + OPTIMA": ("wanda+optima", "wanda+optima@solver.damp=0.01"),
    "SparseGPT + OPTIMA": ("sparsegpt+optima", "sparsegpt+optima@solver.damp=0.01"),
    "refined from Wanda": ("wanda+optima" + REFINE, None),
    "refined from SparseGPT": ("sparsegpt+optima" + REFINE, None),
}
BASELINE = "SparseGPT + OPTIMA"
GOAL = {"0.7": -20.0, "0.6": -5.0, "2:4": -5.0, "2:4/mlp": -5.0, "0.5": 0.0}  # % vs SparseGPT + OPTIMA


def cells(*paths: Path) -> dict:
    """(regime, row) -> cell over the files that exist (a later file's cell replaces an earlier one's)."""
    return {(c["regime"], c["row"]): c for p in paths if p.exists() for c in json.loads(p.read_text())["cells"]}


def cost(cell: dict) -> float | None:
    """Σ seconds_refine / Σ seconds_update over the linears, else refine_s / update_s of the cell's times."""
    lin = [x for x in cell.get("linears", []) if x.get("seconds_refine") is not None]
    if lin:
        return sum(x["seconds_refine"] for x in lin) / sum(x["seconds_update"] for x in lin)
    t = cell.get("times", {})
    if not t.get("update_s"):
        return None
    if t.get("refine_s"):
        return t["refine_s"] / t["update_s"]
    # cells measured before the run's timings had a refine_s: the rest of the pruning time
    return (t["prune_s"] - t["select_s"] - t["update_s"]) / t["update_s"]


def against(c: dict, base: dict, evals: list, regime: str) -> tuple[str, str, str]:
    """A refined cell against a baseline cell: (% per eval text, goal met, refine / update time)."""
    d = [100 * (c["ppl"][e] / base["ppl"][e] - 1) for e in evals]
    met = "yes" if all(x <= GOAL[regime] for x in d) else f"no (goal {GOAL[regime]:+.0f}%)"
    r = cost(c)
    ratio = "" if r is None else f"+{r:.2f}x ({1 + r:.2f}x in all)"
    return " / ".join(f"{x:+.1f}%" for x in d), met, ratio


def validation_table(model: str, own: dict) -> list[str]:
    """The cells of refine_val_<model>.json (the same rows with --validation, measured at commit 26cea4f
    whose per-row validation choice was then reverted), each against SparseGPT + OPTIMA with the same validation text
    and against the main table's SparseGPT + OPTIMA (no validation)."""
    path = RESULTS / f"refine_val_{model}.json"
    if not path.exists():
        return []
    res = json.loads(path.read_text())
    val = {(c["regime"], c["row"]): c for c in res["cells"]}
    evals = res["setup"]["eval"]
    base_name = ROWS[BASELINE][0]
    lines = [
        f"With `--validation {res['setup']['validation']}` ({path.name}):",
        "",
        f"| regime | row | {' | '.join(evals)} | vs {BASELINE}, same validation | vs {BASELINE} without |"
        " goal met | refine / update time |",
        "|---|---|" + "---|" * len(evals) + "---|---|---|---|",
    ]

    for (regime, name), c in val.items():
        label = next((col for col, (n, _) in ROWS.items() if n == name), f"`{name}`")
        same, without = val.get((regime, base_name)), own.get((regime, base_name))
        refined = "refine.method=alps" in name
        vs, met, ratio = against(c, same, evals, regime) if refined and same else ("", "", "")
        plain = against(c, without, evals, regime)[0] if without else ""
        lines.append(
            f"| {regime} | {label} | "
            + " | ".join(f"{c['ppl'][e]:.2f}" for e in evals)
            + f" | {vs} | {plain} | {met} | {ratio} |"
        )
    return lines + [""]


def table(model: str, own: dict) -> list[str]:
    t1 = cells(RESULTS / f"{model}_table1.json")
    evals = None
    lines = []
    for regime in REGIMES:
        found = {}
        for col, (name, t1_name) in ROWS.items():
            if (regime, name) in own:
                found[col] = (own[(regime, name)], "")
            elif t1_name and (regime, t1_name) in t1:
                found[col] = (t1[(regime, t1_name)], "†")
        if not any(col.startswith("refined") for col in found):
            continue
        if evals is None:
            evals = list(next(iter(found.values()))[0]["ppl"])
            lines += [
                f"| regime | row | {' | '.join(evals)} | vs {BASELINE} | goal met | refine / update time |",
                "|---|---|" + "---|" * len(evals) + "---|---|---|",
            ]
        base = found.get(BASELINE)
        names = {name for name, _ in ROWS.values()}
        for (reg, name), c in own.items():  # other refined rows of this regime (e.g. other refine.* settings)
            if reg == regime and name not in names and "refine.method=alps" in name:
                found[f"`{name}`"] = (c, "")
        for col in list(ROWS) + [k for k in found if k not in ROWS]:
            if col not in found:
                lines.append(f"| {regime} | {col} | " + " | ".join("not run" for _ in evals) + " | | | |")
                continue
            c, mark = found[col]
            ppl = [c["ppl"][e] for e in evals]
            vs = met = ratio = ""
            if "refine" in col and base:
                vs, met, ratio = against(c, base[0], evals, regime)
            lines.append(
                f"| {regime} | {col}{mark} | " + " | ".join(f"{p:.2f}" for p in ppl) + f" | {vs} | {met} | {ratio} |"
            )
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    out = []
    for model, title in MODELS.items():
        own = cells(*sorted(RESULTS.glob(f"refine_{model}*.json")))
        out += [f"### {title}", ""] + (table(model, own) or ["(no refined cells yet)"]) + [""]
        out += validation_table(model, own)
    out += ["† from the model's Table 1 file (same calibration, evaluation and damp; docs/results/table1.md)."]
    emit_table(out, args.out)


if __name__ == "__main__":
    main()
