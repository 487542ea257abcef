"""The causal LM around a family's backbone (HF's ``model.`` subtree, chosen by the registry) and the LM head.

``CausalLM(cfg)(ids)``: int [B, T] -> float32 logits [B, T, V]; attribute paths mirror HF tensor names
(``lm_head.weight`` absent when embeddings are tied).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from optima_jax.models.config import ModelConfig
from optima_jax.models.registry import backbone_class
from optima_jax.models.transformer import Linear


def make_backbone(cfg: ModelConfig, dtype) -> nnx.Module:
    """The family's backbone module (HF's ``model.`` subtree) for ``cfg``."""
    return backbone_class(cfg)(cfg, dtype)


class CausalLM(nnx.Module):
    """Decoder-only LM. ``model(ids)`` int [B, T] -> float32 logits [B, T, V]."""

    def __init__(self, cfg: ModelConfig, dtype=jnp.float32):
        self.config = cfg
        self.dtype = jnp.dtype(dtype)
        self.model = make_backbone(cfg, dtype)
        self.lm_head = (
            None if cfg.tie_word_embeddings else Linear(self.model.head_features, cfg.vocab_size, False, dtype)
        )

    @property
    def layers(self):
        return self.model.layers

    def embed(self, ids: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """ids int [B, T] -> h [B, T, D] in the compute dtype: token embeddings (times sqrt(D) for Gemma;
        plus learned position embeddings at ``positions``, default ``arange(T)``, for OPT)."""
        return self.model.embed(ids, positions)

    def final_logits(self, h: jax.Array) -> jax.Array:
        """h [B, T, D] -> float32 logits [B, T, V]: final norm, lm_head (or tied embeddings), soft-capping."""
        x = self.model.head_input(h)
        if self.lm_head is None:
            logits = jnp.einsum("btd,vd->btv", x, self.model.input_embeddings())
        else:
            logits = self.lm_head(x)
        logits = logits.astype(jnp.float32)
        cap = self.config.final_logit_softcap
        if cap is not None:
            logits = jnp.tanh(logits / cap) * cap
        return logits

    def __call__(self, ids: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        ids = jnp.asarray(ids)
        if positions is None:
            positions = jnp.arange(ids.shape[1])[None]
        h = self.embed(ids, positions)
        for layer in self.layers:
            h = layer(h, positions)
        return self.final_logits(h)


@nnx.jit
def forward(model: CausalLM, ids: jax.Array) -> jax.Array:
    """Jitted ``model(ids)``: int [B, T] -> float32 logits [B, T, V] (compiled once per model structure/shape)."""
    return model(ids)
