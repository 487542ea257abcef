"""Qwen 2/2.5 config: LLaMA's layout with q/k/v biases (no o_proj or MLP bias); sliding window only when
``use_sliding_window``. The LLaMA parser reads the shared keys and this module adds what Qwen 2 changes."""

from __future__ import annotations

import dataclasses

from optima_jax.models.config import FULL, SLIDING, ModelConfig, check_positive
from optima_jax.models.llama.modeling import config_from_hf as _llama_config_from_hf


def config_from_hf(d: dict, where: str = "config.json") -> ModelConfig:
    """HF Qwen2Config dict -> ModelConfig. Sliding layers are those with index >= max_window_layers
    (or ``layer_types`` when given), and only if ``use_sliding_window`` is true."""
    shared = {k: v for k, v in d.items() if k not in ("attention_bias", "mlp_bias")}  # Qwen 2 fixes its biases
    base = _llama_config_from_hf(shared, where=where)
    n = base.num_layers
    window = int(d.get("sliding_window") or 4096) if d.get("use_sliding_window", False) else None
    if window is None:
        layer_types = (FULL,) * n
    elif d.get("layer_types"):
        layer_types = tuple(d["layer_types"])
    else:
        mwl = int(d.get("max_window_layers", 28))
        layer_types = tuple(SLIDING if i >= mwl else FULL for i in range(n))
    cfg = dataclasses.replace(
        base,
        model_type="qwen2",
        layer_types=layer_types,
        sliding_window=window,
        qkv_bias=True,
        o_bias=False,
        mlp_bias=False,
        hf_config=dict(d),
    )
    return check_positive(cfg, where)
