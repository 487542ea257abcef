"""HF tensor names and shapes for the core decoder (shared by the families' ``params.py``)."""

from __future__ import annotations

from optima_jax.models.config import ModelConfig

LINEAR_NAMES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
# group -> linears that read the same input array (one Hessian per group)
INPUT_GROUPS = {
    "attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn_out": ("self_attn.o_proj",),
    "mlp_in": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp_out": ("mlp.down_proj",),
}


def layer_prefix(i: int) -> str:
    """HF name prefix of block ``i``'s tensors."""
    return f"model.layers.{i}."


def linear_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """Linear name in a block -> (out_features, in_features)."""
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    return {
        "self_attn.q_proj": (cfg.num_heads * hd, d),
        "self_attn.k_proj": (cfg.num_kv_heads * hd, d),
        "self_attn.v_proj": (cfg.num_kv_heads * hd, d),
        "self_attn.o_proj": (d, cfg.num_heads * hd),
        "mlp.gate_proj": (f, d),
        "mlp.up_proj": (f, d),
        "mlp.down_proj": (d, f),
    }


def block_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Tensor suffix inside one block (``self_attn.q_proj.weight``...) -> shape."""
    out: dict[str, tuple[int, ...]] = {}
    for name, shp in linear_shapes(cfg).items():
        out[f"{name}.weight"] = shp
        has_bias = (
            (cfg.qkv_bias and name in LINEAR_NAMES[:3])
            or (cfg.o_bias and name == "self_attn.o_proj")
            or (cfg.mlp_bias and name.startswith("mlp."))
        )
        if has_bias:
            out[f"{name}.bias"] = (shp[0],)
    norms = ["input_layernorm", "post_attention_layernorm"]
    if cfg.sandwich_norm:
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for n in norms:
        out[f"{n}.weight"] = (cfg.hidden_size,)
    if cfg.qk_norm:
        out["self_attn.q_norm.weight"] = (cfg.head_dim,)
        out["self_attn.k_norm.weight"] = (cfg.head_dim,)
    return out


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the text model by HF name -> shape (lm_head only when embeddings are untied)."""
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.hidden_size)}
    blk = block_shapes(cfg)
    for i in range(cfg.num_layers):
        for suffix, shp in blk.items():
            out[f"model.layers.{i}.{suffix}"] = shp
    out["model.norm.weight"] = (cfg.hidden_size,)
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, cfg.hidden_size)
    return out


def canonical_name(name: str, cfg: ModelConfig) -> str | None:
    """Checkpoint tensor name -> our HF name, or None for tensors that are ignored on purpose
    (rotary caches; ``lm_head.weight`` duplicated in a tied checkpoint)."""
    if name.endswith("rotary_emb.inv_freq"):
        return None
    if name == "lm_head.weight" and cfg.tie_word_embeddings:
        return None
    return name
