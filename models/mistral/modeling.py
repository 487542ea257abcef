"""Mistral config: LLaMA's layout (no biases) with a sliding window on every layer.

transformers' MistralConfig differs from LlamaConfig in its defaults: ``num_key_value_heads`` 8 when the key is
absent, ``sliding_window`` 4096 when absent (``null``: full attention, as Mistral-7B-v0.3 ships). A query attends to
keys with ``q - window < k <= q`` (transformers' ``sliding_window_overlay``, the core decoder's rule). MistralModel
ignores ``layer_types``; ``model_type: ministral`` is the same architecture with per-layer ``layer_types`` (default:
every layer sliding when a window is set).
"""

from __future__ import annotations

import dataclasses

from optima_jax.models.config import FULL, SLIDING, ModelConfig, check_positive
from optima_jax.models.llama.modeling import config_from_hf as _llama_config_from_hf

DEFAULT_KV_HEADS = 8  # transformers' MistralConfig.num_key_value_heads
DEFAULT_SLIDING_WINDOW = 4096  # transformers' MistralConfig.sliding_window


def _common(d: dict, model_type: str, where: str, layer_types: tuple[str, ...] | None) -> ModelConfig:
    shared = {k: v for k, v in d.items() if k not in ("attention_bias", "mlp_bias")}  # Mistral has no biases
    shared.setdefault("num_key_value_heads", DEFAULT_KV_HEADS)
    base = _llama_config_from_hf(shared, where=where)
    window = d.get("sliding_window", DEFAULT_SLIDING_WINDOW)
    window = None if window is None else int(window)
    if layer_types is None:
        layer_types = (SLIDING if window is not None else FULL,) * base.num_layers
    cfg = dataclasses.replace(
        base, model_type=model_type, layer_types=layer_types, sliding_window=window, hf_config=dict(d)
    )
    return check_positive(cfg, where)


def config_from_hf(d: dict, where: str = "config.json") -> ModelConfig:
    """HF MistralConfig dict (old or transformers-5 format) -> ModelConfig (every layer sliding when a window is
    set; ``layer_types`` is ignored, as MistralModel does)."""
    return _common(d, "mistral", where, None)


def ministral_config_from_hf(d: dict, where: str = "config.json") -> ModelConfig:
    """HF MinistralConfig dict -> ModelConfig: Mistral with per-layer full / sliding attention from ``layer_types``."""
    return _common(d, "ministral", where, tuple(d["layer_types"]) if d.get("layer_types") else None)
