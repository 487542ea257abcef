"""LLaMA-3.1-8B as in the paper: C4 calibration (128 x 2048), WikiText2 perplexity.

python -m optima_jax.prune --config configs/llama3_1_8b.py [--config.sparsity=2:4 --config.prune_scope=mlp]
"""

from optima_jax.config import default_config


def get_config():
    c = default_config()
    c.model = "meta-llama/Llama-3.1-8B"
    c.calibration.source = "c4"
    c.calibration.nsamples = 128
    c.calibration.seqlen = 2048
    c.eval.source = "wikitext2"
    c.eval.seqlen = 2048
    c.output_dir = "runs/llama3_1_8b"
    c.dtype = "bfloat16"  # activations in bf16; Hessians and solves stay float32
    c.hidden_states_on = "host"
    c.calibration.micro_batch = 4
    return c
