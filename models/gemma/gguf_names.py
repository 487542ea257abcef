"""Gemma 2 / Gemma 3's GGUF files (``general.architecture: gemma2 | gemma3``, written unpermuted): sandwich-norm
tensor names, every RMSNorm weight stored as ``1 + w``, soft-capping and the sliding/global layer pattern in the
metadata."""

from __future__ import annotations

from gguf.constants import MODEL_TENSOR

from optima_jax.models.errors import GGUFError
from optima_jax.models.gguf_names import BLOCK_COMMON, GGUFFile, GGUFNames, by_gguf_name

BLOCK_NAMES = by_gguf_name(
    {
        **BLOCK_COMMON,
        MODEL_TENSOR.ATTN_POST_NORM: "post_attention_layernorm",
        MODEL_TENSOR.FFN_NORM: "pre_feedforward_layernorm",
        MODEL_TENSOR.FFN_POST_NORM: "post_feedforward_layernorm",
    }
)


def gguf_config(f: GGUFFile, cfg: dict) -> None:
    """Gemma's config keys beyond the shared ones."""
    n_layers, hidden, heads = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]
    # llama.cpp scales queries by 1/sqrt(head_dim), except for the 27B models (1/sqrt(hidden/heads)).
    is_27b = (f.model_type == "gemma2" and n_layers == 46) or (f.model_type == "gemma3_text" and n_layers == 62)
    cfg.update(
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=hidden // heads if is_27b else cfg["head_dim"],
        sliding_window=f.window(),
        attention_bias=False,
    )
    if f.model_type == "gemma2":
        cfg.update(
            attn_logit_softcapping=_cap(f.get("attn_logit_softcapping", 50.0)),
            final_logit_softcapping=_cap(f.get("final_logit_softcapping", 30.0)),
            layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)],
            architectures=["Gemma2ForCausalLM"],
        )
    else:
        cfg.update(
            attn_logit_softcapping=None,
            final_logit_softcapping=_cap(f.get("final_logit_softcapping")),
            rope_local_base_freq=10000.0,
            layer_types=_gemma3_layer_types(f.get("attention.sliding_window_pattern"), n_layers, f.where),
            architectures=["Gemma3ForCausalLM"],
        )
        cfg["sliding_window_pattern"] = _pattern_period(cfg["layer_types"])


def _cap(v):
    """A soft-capping value (0 or absent: none)."""
    return None if v is None or float(v) == 0.0 else float(v)


def _gemma3_layer_types(pattern, n_layers: int, where: str) -> list[str]:
    """Gemma 3 layer kinds: per-layer bools (True = sliding) or a period k from the GGUF; default every 6th global."""
    if isinstance(pattern, list):
        if len(pattern) != n_layers:
            raise GGUFError(
                f"{where}: attention.sliding_window_pattern has {len(pattern)} entries, expected {n_layers}"
            )
        return ["sliding_attention" if bool(s) else "full_attention" for s in pattern]
    k = 6 if pattern is None else int(pattern)
    return ["sliding_attention" if (i + 1) % k else "full_attention" for i in range(n_layers)]


def _pattern_period(layer_types: list[str]) -> int | None:
    full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    return full[0] + 1 if full else None


GGUF = GGUFNames(
    architectures={"gemma2": "gemma2", "gemma3": "gemma3_text"},
    config=gguf_config,
    block_names=BLOCK_NAMES,
    norm_offset=1.0,
)
