"""Qwen3-0.6B: the paper models' settings (C4 calibration 128 x 2048, WikiText2 perplexity),
taken from configs/qwen2_5_0_5b.py.

python -m optima_jax.prune --config configs/qwen3_0_6b.py [--config.sparsity=2:4 --config.prune_scope=mlp]
"""

from optima_jax.configs.qwen2_5_0_5b import get_config as _paper_settings


def get_config():
    c = _paper_settings()
    c.model = "Qwen/Qwen3-0.6B"
    c.output_dir = "runs/qwen3_0_6b"
    return c
