"""LLaMA's GGUF files (``general.architecture: llama``): llama.cpp's converter permutes the q/k rows, may store
``head_dim`` as ``rope.dimension_count``, and writes llama3 rope scaling as a ``rope_freqs`` tensor."""

from __future__ import annotations

import numpy as np

from optima_jax.models.errors import GGUFError
from optima_jax.models.gguf_names import GGUFFile, GGUFNames


def gguf_config(f: GGUFFile, cfg: dict) -> None:
    """LLaMA's config keys beyond the shared ones (biases from the tensors, llama3 rope from ``rope_freqs``)."""
    cfg.update(
        hidden_act="silu",
        attention_bias="blk.0.attn_q.bias" in f.tensor_names,
        mlp_bias="blk.0.ffn_up.bias" in f.tensor_names,
    )
    if f.rope_freqs is not None:
        cfg["rope_scaling"] = llama3_rope_from_freqs(
            f.rope_freqs,
            cfg["rope_theta"],
            cfg["head_dim"],
            int(f.get("rope.scaling.original_context_length", 8192)),
            f.where,
        )
    cfg["architectures"] = ["LlamaForCausalLM"]


def llama3_rope_from_freqs(freqs: np.ndarray, theta: float, head_dim: int, orig_ctx: int, where: str) -> dict:
    """llama.cpp stores llama3 rope scaling as per-frequency divisors; recover HF's rope_scaling parameters.

    Factor is the largest divisor; low/high freq factors are the llama3 defaults (1, 4), checked against the
    tensor (an error if the recipe does not reproduce it).
    """
    freqs = np.asarray(freqs, dtype=np.float64).reshape(-1)
    factor = float(freqs.max())
    low, high = 1.0, 4.0
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv
    smooth = (orig_ctx / wavelen - low) / (high - low)
    expected = np.where(
        wavelen < orig_ctx / high,
        1.0,
        np.where(wavelen > orig_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)),
    )
    if expected.shape != freqs.shape or not np.allclose(expected, freqs, rtol=1e-3):
        raise GGUFError(f"{where}: rope_freqs tensor does not match the llama3 rope scaling recipe")
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": orig_ctx,
    }


# llama.cpp's llama-architecture conventions, shared by the families it converts as ``llama`` (Mistral too)
LLAMA_ARCH = {"head_dim_keys": ("attention.key_length", "rope.dimension_count"), "permuted_qk": True}

GGUF = GGUFNames(architectures={"llama": "llama"}, config=gguf_config, **LLAMA_ARCH)
