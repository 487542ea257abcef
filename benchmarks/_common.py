"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, which puts this folder on
``sys.path``): captured-layer readers, float64 reference objectives and markdown output. The library itself is
used only through its public API."""

import glob
import os
from pathlib import Path

import numpy as np


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
