"""Gemma 2 / Gemma 3 text configs.

Both: (1 + w) RMSNorm in float32, sandwich norms, GeGLU (``hidden_activation``), sqrt(hidden) embedding scale,
``query_pre_attn_scalar``, sliding/global layers, final-logit soft-capping. Gemma 2 adds attention-logit
soft-capping; Gemma 3 adds q/k RMSNorm and separate rope bases for sliding (local) and global layers.
"""

from __future__ import annotations

from optima_jax.models.config import (
    FULL,
    SLIDING,
    ModelConfig,
    ModelConfigError,
    check_activation,
    check_positive,
    get,
    parse_rope,
)

_NULL = object()


def _opt_float(d: dict, key: str, default):
    v = d.get(key, default)
    return None if v is None else float(v)


def _common(
    d: dict, model_type: str, where: str, layer_types, full, sliding, attn_cap, final_cap, qk_norm: bool
) -> ModelConfig:
    heads = int(get(d, "num_attention_heads", where=where))
    hidden = int(get(d, "hidden_size", where=where))
    kv = d.get("num_key_value_heads") or heads
    head_dim = int(d.get("head_dim") or 256)
    act = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
    attn_bias = bool(d.get("attention_bias", False))
    cfg = ModelConfig(
        model_type=model_type,
        vocab_size=int(get(d, "vocab_size", where=where)),
        hidden_size=hidden,
        intermediate_size=int(get(d, "intermediate_size", where=where)),
        num_layers=int(get(d, "num_hidden_layers", where=where)),
        num_heads=heads,
        num_kv_heads=int(kv),
        head_dim=head_dim,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        hidden_act=check_activation(act, where),
        layer_types=layer_types,
        rope_full=full,
        rope_sliding=sliding,
        sliding_window=None if d.get("sliding_window", 4096) is None else int(d.get("sliding_window", 4096)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
        qkv_bias=attn_bias,
        o_bias=attn_bias,
        norm_plus_one=True,
        sandwich_norm=True,
        qk_norm=qk_norm,
        embed_scale=True,
        bos="always",
        attn_scale=float(d.get("query_pre_attn_scalar", 256)) ** -0.5,
        attn_logit_softcap=attn_cap,
        final_logit_softcap=final_cap,
        hf_config=dict(d),
    )
    return check_positive(cfg, where)


def gemma2_config_from_hf(d: dict, where: str = "config.json") -> ModelConfig:
    """HF Gemma2Config dict -> ModelConfig. Default layer pattern: even layers sliding, odd layers global."""
    n = int(get(d, "num_hidden_layers", where=where))
    layer_types = tuple(d.get("layer_types") or (SLIDING if (i + 1) % 2 else FULL for i in range(n)))
    full, _ = parse_rope(d, default_theta=10000.0, where=where)
    return _common(
        d,
        "gemma2",
        where,
        layer_types,
        full,
        full,
        _opt_float(d, "attn_logit_softcapping", 50.0),
        _opt_float(d, "final_logit_softcapping", 30.0),
        qk_norm=False,
    )


def gemma3_text_config_from_hf(d: dict, where: str = "config.json") -> ModelConfig:
    """HF Gemma3TextConfig dict -> ModelConfig. Layer pattern from ``layer_types``, else ``sliding_window_pattern``
    (every k-th layer global, default 6). Global layers use rope_theta (+ rope scaling), sliding layers
    rope_local_base_freq."""
    n = int(get(d, "num_hidden_layers", where=where))
    if d.get("layer_types"):
        layer_types = tuple(d["layer_types"])
    else:
        k = int(d.get("sliding_window_pattern") or 6)
        layer_types = tuple(SLIDING if (i + 1) % k else FULL for i in range(n))
    full, sliding = parse_rope(d, default_theta=1_000_000.0, where=where, local_theta=10_000.0)
    return _common(
        d,
        "gemma3_text",
        where,
        layer_types,
        full,
        sliding,
        _opt_float(d, "attn_logit_softcapping", None),
        _opt_float(d, "final_logit_softcapping", None),
        qk_norm=True,
    )


def gemma3_config_from_hf(d: dict, where: str = "config.json") -> ModelConfig:
    """HF Gemma3Config (multimodal, ``model_type: gemma3``) -> the text model's ModelConfig.

    ``hf_config`` keeps the original multimodal dict; :func:`text_hf_config` gives the text-only export config.
    """
    text = d.get("text_config")
    if not isinstance(text, dict):
        raise ModelConfigError(f"{where}: model_type 'gemma3' needs a 'text_config' dict")
    text = dict(text)
    text.setdefault("tie_word_embeddings", d.get("tie_word_embeddings", True))
    cfg = gemma3_text_config_from_hf(text, where=f"{where} (text_config)")
    import dataclasses

    return dataclasses.replace(cfg, hf_config=dict(d))


def text_hf_config(cfg: ModelConfig) -> dict:
    """The HF config dict to export for this text model: a ``gemma3`` multimodal config becomes the equivalent
    ``gemma3_text`` Gemma3ForCausalLM config; other configs are returned unchanged."""
    d = dict(cfg.hf_config)
    if d.get("model_type") != "gemma3":
        return d
    text = dict(d["text_config"])
    text.setdefault("tie_word_embeddings", d.get("tie_word_embeddings", True))
    text["model_type"] = "gemma3_text"
    text["architectures"] = ["Gemma3ForCausalLM"]
    for k in ("bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype", "transformers_version"):
        if k in d and k not in text:
            text[k] = d[k]
    return text
