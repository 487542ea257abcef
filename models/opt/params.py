"""OPT HF tensor names and shapes (``OPTForCausalLM``: everything under ``model.decoder.``).

Old hub checkpoints saved from ``OPTModel`` name tensors ``decoder.*``; :func:`canonical_name` maps them to
``model.decoder.*``.
"""

from __future__ import annotations

from optima_jax.models.config import ModelConfig

LINEAR_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")
# group -> linears that read the same input array (one Hessian per group)
INPUT_GROUPS = {
    "attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn_out": ("self_attn.out_proj",),
    "mlp_in": ("fc1",),
    "mlp_out": ("fc2",),
}
PREFIX = "model.decoder."


def layer_prefix(i: int) -> str:
    """HF name prefix of block ``i``'s tensors."""
    return f"{PREFIX}layers.{i}."


def linear_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """Linear name in a block -> (out_features, in_features)."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    return {
        "self_attn.q_proj": (d, d),
        "self_attn.k_proj": (d, d),
        "self_attn.v_proj": (d, d),
        "self_attn.out_proj": (d, d),
        "fc1": (f, d),
        "fc2": (d, f),
    }


def _norm(name: str, cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    if not cfg.norm_affine:
        return {}
    return {f"{name}.weight": (cfg.hidden_size,), f"{name}.bias": (cfg.hidden_size,)}


def block_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Tensor suffix inside one block (``self_attn.q_proj.weight``, ``fc1.bias``...) -> shape."""
    out: dict[str, tuple[int, ...]] = {}
    for name, shp in linear_shapes(cfg).items():
        out[f"{name}.weight"] = shp
        if cfg.qkv_bias:
            out[f"{name}.bias"] = (shp[0],)
    out.update(_norm("self_attn_layer_norm", cfg))
    out.update(_norm("final_layer_norm", cfg))
    return out


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model by HF name -> shape (lm_head only when embeddings are untied)."""
    d = cfg.hidden_size
    p = cfg.embed_dim or d
    out: dict[str, tuple[int, ...]] = {
        f"{PREFIX}embed_tokens.weight": (cfg.vocab_size, p),
        f"{PREFIX}embed_positions.weight": (cfg.learned_positions, d),
    }
    if cfg.embed_dim is not None:
        out[f"{PREFIX}project_in.weight"] = (d, p)
        out[f"{PREFIX}project_out.weight"] = (p, d)
    blk = block_shapes(cfg)
    for i in range(cfg.num_layers):
        for suffix, shp in blk.items():
            out[layer_prefix(i) + suffix] = shp
    if cfg.final_norm:
        out.update({PREFIX + k: v for k, v in _norm("final_layer_norm", cfg).items()})
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, p)
    return out


def canonical_name(name: str, cfg: ModelConfig) -> str | None:
    """Checkpoint tensor name -> our HF name, or None when ignored on purpose (``lm_head.weight`` in a tied
    checkpoint). ``decoder.*`` (checkpoints saved from ``OPTModel``) -> ``model.decoder.*``."""
    if name == "lm_head.weight" and cfg.tie_word_embeddings:
        return None
    if name.startswith("decoder."):
        return "model." + name
    return name
