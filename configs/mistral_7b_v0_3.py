"""Mistral-7B-v0.3: the paper models' settings (C4 calibration 128 x 2048, WikiText2 perplexity;
bf16 activations, hidden states on the host), taken from configs/llama3_1_8b.py.

python -m optima_jax.prune --config configs/mistral_7b_v0_3.py [--config.sparsity=2:4 --config.prune_scope=mlp]
"""

from optima_jax.configs.llama3_1_8b import get_config as _paper_settings


def get_config():
    c = _paper_settings()
    c.model = "mistralai/Mistral-7B-v0.3"
    c.output_dir = "runs/mistral_7b_v0_3"
    return c
