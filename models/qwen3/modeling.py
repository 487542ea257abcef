"""Qwen 3 (dense) config: Qwen 2's layout with RMSNorm over head_dim on q and k (before RoPE), no q/k/v bias
unless ``attention_bias`` (which also gives o_proj a bias), and an explicit ``head_dim`` (default 128, as
transformers' Qwen3Config, not hidden / heads).

Sliding windows follow Qwen 2's rule (only with ``use_sliding_window``; layers from ``max_window_layers`` on, or
``layer_types``), so the Qwen 2 parser reads the shared keys and this module adds what Qwen 3 changes.
"""

from __future__ import annotations

import dataclasses

from optima_jax.models.config import ModelConfig, check_positive
from optima_jax.models.qwen2.modeling import config_from_hf as _qwen2_config_from_hf

DEFAULT_HEAD_DIM = 128  # transformers' Qwen3Config.head_dim


def config_from_hf(d: dict, where: str = "config.json") -> ModelConfig:
    """HF Qwen3Config dict (old or transformers-5 format) -> ModelConfig."""
    shared = dict(d)
    if shared.get("head_dim") is None:
        shared["head_dim"] = DEFAULT_HEAD_DIM
    base = _qwen2_config_from_hf(shared, where=where)
    bias = bool(d.get("attention_bias", False))
    cfg = dataclasses.replace(base, model_type="qwen3", qkv_bias=bias, o_bias=bias, qk_norm=True, hf_config=dict(d))
    return check_positive(cfg, where)
