"""Qwen 2/2.5 config: q/k/v biases (no o_proj bias); sliding window only when ``use_sliding_window``."""

from __future__ import annotations

from optima_jax.models.config import FULL, SLIDING, ModelConfig, check_activation, check_positive, get, parse_rope


def config_from_hf(d: dict, where: str = "config.json") -> ModelConfig:
    """HF Qwen2Config dict -> ModelConfig. Sliding layers are those with index >= max_window_layers
    (or ``layer_types`` when given), and only if ``use_sliding_window`` is true."""
    heads = int(get(d, "num_attention_heads", where=where))
    hidden = int(get(d, "hidden_size", where=where))
    kv = d.get("num_key_value_heads") or heads
    head_dim = int(d.get("head_dim") or hidden // heads)
    n = int(get(d, "num_hidden_layers", where=where))
    window = int(d.get("sliding_window") or 4096) if d.get("use_sliding_window", False) else None
    if window is None:
        layer_types = (FULL,) * n
    elif d.get("layer_types"):
        layer_types = tuple(d["layer_types"])
    else:
        mwl = int(d.get("max_window_layers", 28))
        layer_types = tuple(SLIDING if i >= mwl else FULL for i in range(n))
    full, _ = parse_rope(d, default_theta=10000.0, where=where)
    cfg = ModelConfig(
        model_type="qwen2",
        vocab_size=int(get(d, "vocab_size", where=where)),
        hidden_size=hidden,
        intermediate_size=int(get(d, "intermediate_size", where=where)),
        num_layers=n,
        num_heads=heads,
        num_kv_heads=int(kv),
        head_dim=head_dim,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        hidden_act=check_activation(d.get("hidden_act") or "silu", where),
        layer_types=layer_types,
        rope_full=full,
        rope_sliding=full,
        sliding_window=window,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        qkv_bias=True,
        attn_scale=float(head_dim) ** -0.5,
        hf_config=dict(d),
    )
    return check_positive(cfg, where)
