"""Qwen 3's GGUF files (``general.architecture: qwen3``, written unpermuted): ``attn_q_norm`` / ``attn_k_norm``
tensors and ``head_dim`` as ``attention.key_length``."""

from __future__ import annotations

from optima_jax.models.gguf_names import GGUFFile, GGUFNames


def gguf_config(f: GGUFFile, cfg: dict) -> None:
    """Qwen 3's config keys beyond the shared ones (q/k/v/o biases from the tensors)."""
    cfg.update(
        hidden_act="silu",
        attention_bias="blk.0.attn_q.bias" in f.tensor_names,
        use_sliding_window=False,
        architectures=["Qwen3ForCausalLM"],
    )


GGUF = GGUFNames(architectures={"qwen3": "qwen3"}, config=gguf_config)
