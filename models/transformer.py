"""The one decoder implementation (Flax NNX) behind every family.

Module attribute paths mirror HF tensor names, so ``nnx.state(model)`` flattens to the HF params dict:
``model.embed_tokens.weight``, ``model.layers.{i}.self_attn.q_proj.weight`` (out, in), ``model.norm.weight``,
``lm_head.weight`` (absent when embeddings are tied).

Precision follows transformers: matmuls in the compute dtype, RMSNorm statistics and softmax in float32.
Attention (naive, blockwise flash-style, cuDNN) lives in :mod:`models.attention`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from optima_jax.models.attention import attend
from optima_jax.models.config import SLIDING, ModelConfig
from optima_jax.models.hf_names import LINEAR_NAMES


def activation(name: str, x: jax.Array) -> jax.Array:
    if name == "silu":
        return jax.nn.silu(x)
    if name in ("gelu_pytorch_tanh", "gelu_new"):
        return jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "relu":
        return jax.nn.relu(x)
    raise ValueError(f"unknown activation {name!r}")


class Linear(nnx.Module):
    """y = x Wᵀ + b with W (out_features, in_features) in HF layout."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype):
        self.weight = nnx.Param(jnp.zeros((out_features, in_features), dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.weight[...]
        y = jnp.einsum("...i,oi->...o", x.astype(w.dtype), w)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis; statistics in float32.

    plus_one (Gemma): ``(x̂ * (1 + w)).astype(dtype)`` in float32; else (LLaMA): ``w * x̂.astype(dtype)``.
    """

    def __init__(self, dim: int, eps: float, plus_one: bool, dtype):
        self.weight = nnx.Param(jnp.zeros((dim,), dtype) if plus_one else jnp.ones((dim,), dtype))
        self.eps = eps
        self.plus_one = plus_one

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        w = self.weight[...]
        if self.plus_one:
            return (xf * (1.0 + w.astype(jnp.float32))).astype(dtype)
        return w * xf.astype(dtype)


def rope_cos_sin(inv_freq: np.ndarray, positions: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B|1, T, head_dim] for integer positions [B|1, T], computed in float32 then cast."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def _rotate_half(x: jax.Array) -> jax.Array:
    h = x.shape[-1] // 2
    return jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, heads, head_dim]; cos/sin [B|1, T, head_dim]."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return x * cos + _rotate_half(x) * sin


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, dtype):
        d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = Linear(d, h * hd, cfg.qkv_bias, dtype)
        self.k_proj = Linear(d, kv * hd, cfg.qkv_bias, dtype)
        self.v_proj = Linear(d, kv * hd, cfg.qkv_bias, dtype)
        self.o_proj = Linear(h * hd, d, cfg.o_bias, dtype)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps, cfg.norm_plus_one, dtype)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps, cfg.norm_plus_one, dtype)
        else:
            self.q_norm = None
            self.k_norm = None
        self.num_heads, self.num_kv_heads, self.head_dim = h, kv, hd
        self.scale = cfg.attn_scale
        self.softcap = cfg.attn_logit_softcap
        self.window = cfg.window_for(layer_idx)
        self.inv_freq = tuple(float(v) for v in cfg.rope_for(layer_idx).inv_freq(hd))  # static, hashable

    def __call__(self, x: jax.Array, positions: jax.Array, inputs: dict | None = None) -> jax.Array:
        """x [B, T, D] (already normed) -> [B, T, D]. Fills ``inputs`` with the o_proj input when given."""
        b, t, _ = x.shape
        h, kv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).reshape(b, t, h, hd)
        k = self.k_proj(x).reshape(b, t, kv, hd)
        v = self.v_proj(x).reshape(b, t, kv, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope_cos_sin(np.asarray(self.inv_freq, np.float32), positions, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attend(q, k, v, self.scale, self.softcap, self.window)
        if inputs is not None:
            inputs["self_attn.o_proj"] = out
        return self.o_proj(out)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(d, f, cfg.mlp_bias, dtype)
        self.up_proj = Linear(d, f, cfg.mlp_bias, dtype)
        self.down_proj = Linear(f, d, cfg.mlp_bias, dtype)
        self.act = cfg.hidden_act

    def __call__(self, x: jax.Array, inputs: dict | None = None) -> jax.Array:
        a = activation(self.act, self.gate_proj(x)) * self.up_proj(x)
        if inputs is not None:
            inputs["mlp.down_proj"] = a
        return self.down_proj(a)


class DecoderLayer(nnx.Module):
    """One pre-norm decoder block (with Gemma's extra post-norms when ``cfg.sandwich_norm``)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, dtype):
        eps, p1 = cfg.rms_norm_eps, cfg.norm_plus_one
        # no layer index stored: layers of one type share a graphdef, so a jitted block compiles once per type
        self.is_sliding = cfg.layer_types[layer_idx] == SLIDING
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps, p1, dtype)
        self.self_attn = Attention(cfg, layer_idx, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps, p1, dtype)
        if cfg.sandwich_norm:
            self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps, p1, dtype)
            self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps, p1, dtype)
        else:
            self.pre_feedforward_layernorm = None
            self.post_feedforward_layernorm = None
        self.mlp = MLP(cfg, dtype)

    def __call__(self, h: jax.Array, positions: jax.Array, capture: bool = False):
        """h [B, T, D], positions int [B|1, T] -> h_out [B, T, D]; with capture, (h_out, inputs).

        ``inputs`` maps every linear name to its input activations [B, T, in]: q/k/v share one array object,
        gate/up share one.
        """
        inputs: dict | None = {} if capture else None
        x = self.input_layernorm(h)
        if capture:
            inputs["self_attn.q_proj"] = inputs["self_attn.k_proj"] = inputs["self_attn.v_proj"] = x
        a = self.self_attn(x, positions, inputs)
        if self.pre_feedforward_layernorm is not None:  # Gemma sandwich
            h = h + self.post_attention_layernorm(a)
            x = self.pre_feedforward_layernorm(h)
        else:
            h = h + a
            x = self.post_attention_layernorm(h)
        if capture:
            inputs["mlp.gate_proj"] = inputs["mlp.up_proj"] = x
        m = self.mlp(x, inputs)
        if self.post_feedforward_layernorm is not None:
            m = self.post_feedforward_layernorm(m)
        h = h + m
        if capture:
            return h, {k: inputs[k] for k in LINEAR_NAMES}
        return h


class Embedding(nnx.Module):
    def __init__(self, vocab: int, dim: int, dtype):
        self.weight = nnx.Param(jnp.zeros((vocab, dim), dtype))


class Backbone(nnx.Module):
    """HF's ``model.`` prefix: embed_tokens, layers, norm.

    The interface :class:`CausalLM` uses (other families' backbones, e.g. OPT's, provide the same):
    ``layers``, ``embed(ids, positions)``, ``head_input(h)``, ``input_embeddings()``, ``head_features``.
    """

    def __init__(self, cfg: ModelConfig, dtype):
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.layers = nnx.List([DecoderLayer(cfg, i, dtype) for i in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_plus_one, dtype)
        self.embed_scale = math.sqrt(cfg.hidden_size) if cfg.embed_scale else None
        self.head_features = cfg.hidden_size
        self.dtype = jnp.dtype(dtype)

    def embed(self, ids: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """ids int [B, T] -> h [B, T, D] (times sqrt(D) for Gemma, in the compute dtype); rotary models ignore
        ``positions`` here (the layers apply them)."""
        h = jnp.take(self.embed_tokens.weight[...], ids, axis=0)
        if self.embed_scale is not None:
            h = h * jnp.asarray(self.embed_scale, self.dtype)
        return h

    def head_input(self, h: jax.Array) -> jax.Array:
        """h [B, T, D] -> the LM head's input [B, T, D] (final norm)."""
        return self.norm(h)

    def input_embeddings(self) -> jax.Array:
        """The token embedding table [V, D] (the LM head when embeddings are tied)."""
        return self.embed_tokens.weight[...]
