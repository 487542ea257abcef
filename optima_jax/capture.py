"""Capture real (W, H, keep_mask) triples of chosen linears from a model, for benchmarks and tests.

Runs the sequential engine with Wanda masks (mask only, so later blocks see pruned inputs as in a real run)
up to the last requested block, and saves W (out, in) f32, H (in, in) f32 = Σ xᵀx and Wanda's keep mask
to <dest>/<tag>__<block>.<linear>.npz.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from optima_jax import data, models
from optima_jax.config import default_config
from optima_jax.engine import run_sequential
from optima_jax.fileio import atomic_write
from optima_jax.pruner import make_pruner


class _Stop(Exception):
    pass


def capture_layers(
    model_source: str,
    source: str,
    layers: list[str],
    dest,
    *,
    nsamples: int = 32,
    seqlen: int = 512,
    sparsity: str = "0.5",
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Capture `layers` (e.g. ["0.self_attn.q_proj", "1.mlp.down_proj"]) -> the written .npz paths."""
    dest = Path(dest)
    tag = re.sub(r"[^A-Za-z0-9_-]+", "_", model_source)
    paths = {key: dest / f"{tag}__{key}.npz" for key in layers}
    if all(p.exists() for p in paths.values()):
        return list(paths.values())
    loaded = models.load_model(model_source)
    model = models.build_model(loaded.config, loaded.params, dtype=jnp.float32)
    ids = data.calibration_windows(
        source,
        loaded.tokenizer,
        nsamples=nsamples,
        seqlen=seqlen,
        seed=seed,
        add_bos=loaded.config.adds_bos(loaded.tokenizer),
    )
    cfg = default_config()
    cfg.sparsity, cfg.selector, cfg.weight_update = sparsity, "wanda", "none"
    inner = make_pruner(cfg)
    last = max(int(k.split(".")[0]) for k in layers)
    dest.mkdir(parents=True, exist_ok=True)

    def prune(task):
        res = inner(task)
        key = f"{task.block}.{task.name}"
        if key in paths:
            arrays = dict(
                W=np.asarray(task.weight),
                H=np.asarray(task.stats.H),
                keep_mask=np.asarray(res.keep_mask),
                n_tokens=task.stats.n_tokens,
            )
            atomic_write(paths[key], lambda f: np.savez(f, **arrays), binary=True)
        return res

    def done(d):
        if d.index >= last:
            raise _Stop

    try:
        run_sequential(model, loaded.config, ids, prune, micro_batch=8, on_block_done=done, progress=progress)
    except _Stop:
        pass
    return list(paths.values())
