"""Qwen 2's GGUF files (``general.architecture: qwen2``, written unpermuted)."""

from __future__ import annotations

from optima_jax.models.gguf_names import GGUFFile, GGUFNames


def gguf_config(f: GGUFFile, cfg: dict) -> None:
    """Qwen 2's config keys beyond the shared ones."""
    cfg.update(hidden_act="silu", use_sliding_window=False, architectures=["Qwen2ForCausalLM"])


GGUF = GGUFNames(architectures={"qwen2": "qwen2"}, config=gguf_config)
