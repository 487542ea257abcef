"""Qwen-2.5-3B as in the paper: C4 calibration (128 x 2048), WikiText2 perplexity.

python -m optima_jax.prune --config configs/qwen2_5_3b.py [--config.sparsity=2:4 --config.prune_scope=mlp]
"""

from optima_jax.config import default_config


def get_config():
    c = default_config()
    c.model = "Qwen/Qwen2.5-3B"
    c.calibration.source = "c4"
    c.calibration.nsamples = 128
    c.calibration.seqlen = 2048
    c.eval.source = "wikitext2"
    c.eval.seqlen = 2048
    c.output_dir = "runs/qwen2_5_3b"
    return c
