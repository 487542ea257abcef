"""Qwen3-1.7B: the paper models' settings (C4 calibration 128 x 2048, WikiText2 perplexity),
taken from configs/qwen2_5_1_5b.py.

python -m optima_jax.prune --config configs/qwen3_1_7b.py [--config.sparsity=2:4 --config.prune_scope=mlp]
"""

from optima_jax.configs.qwen2_5_1_5b import get_config as _paper_settings


def get_config():
    c = _paper_settings()
    c.model = "Qwen/Qwen3-1.7B"
    c.output_dir = "runs/qwen3_1_7b"
    return c
