"""LLaMA family config: GQA, llama3/linear rope scaling, tied or untied embeddings, optional head_dim."""

from __future__ import annotations

from optima_jax.models.config import FULL, ModelConfig, check_activation, check_positive, get, parse_rope


def config_from_hf(d: dict, where: str = "config.json") -> ModelConfig:
    """HF LlamaConfig dict (old or transformers-5 format) -> ModelConfig."""
    heads = int(get(d, "num_attention_heads", where=where))
    hidden = int(get(d, "hidden_size", where=where))
    kv = d.get("num_key_value_heads") or heads
    head_dim = d.get("head_dim") or hidden // heads
    n = int(get(d, "num_hidden_layers", where=where))
    full, _ = parse_rope(d, default_theta=10000.0, where=where)
    attn_bias = bool(d.get("attention_bias", False))
    cfg = ModelConfig(
        model_type="llama",
        vocab_size=int(get(d, "vocab_size", where=where)),
        hidden_size=hidden,
        intermediate_size=int(get(d, "intermediate_size", where=where)),
        num_layers=n,
        num_heads=heads,
        num_kv_heads=int(kv),
        head_dim=int(head_dim),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        hidden_act=check_activation(d.get("hidden_act") or "silu", where),
        layer_types=(FULL,) * n,
        rope_full=full,
        rope_sliding=full,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        qkv_bias=attn_bias,
        o_bias=attn_bias,
        mlp_bias=bool(d.get("mlp_bias", False)),
        attn_scale=float(head_dim) ** -0.5,
        hf_config=dict(d),
    )
    return check_positive(cfg, where)
