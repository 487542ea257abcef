"""Qwen3-8B: the paper models' settings (C4 calibration 128 x 2048, WikiText2 perplexity;
bf16 activations, hidden states on the host), taken from configs/qwen2_5_7b.py.

python -m optima_jax.prune --config configs/qwen3_8b.py [--config.sparsity=2:4 --config.prune_scope=mlp]
"""

from optima_jax.configs.qwen2_5_7b import get_config as _paper_settings


def get_config():
    c = _paper_settings()
    c.model = "Qwen/Qwen3-8B"
    c.output_dir = "runs/qwen3_8b"
    return c
