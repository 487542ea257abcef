"""OPT-6.7B (facebook/opt-6.7b): C4 calibration (128 x 2048), WikiText2 perplexity at 2048 tokens
(OPT's max_position_embeddings is 2048).

python -m optima_jax.prune --config configs/opt_6_7b.py [--config.sparsity=2:4 --config.prune_scope=mlp]
"""

from optima_jax.config import default_config


def get_config():
    c = default_config()
    c.model = "facebook/opt-6.7b"
    c.calibration.source = "c4"
    c.calibration.nsamples = 128
    c.calibration.seqlen = 2048
    c.eval.source = "wikitext2"
    c.eval.seqlen = 2048
    c.output_dir = "runs/opt_6_7b"
    return c
