"""OPT config parser and modules (Flax NNX), sharing ``Linear``, the activations and ``attend`` with the core.

Module attribute paths mirror HF names: ``model.decoder.embed_tokens.weight`` [V, P],
``model.decoder.embed_positions.weight`` [max_positions + 2, D], ``model.decoder.layers.{i}.self_attn.q_proj``,
``...self_attn.out_proj``, ``...self_attn_layer_norm``, ``...fc1``, ``...fc2``, ``...final_layer_norm``,
``model.decoder.final_layer_norm``, ``model.decoder.project_in`` / ``project_out`` (when P != D).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from optima_jax.models.config import (
    FULL,
    ModelConfig,
    ModelConfigError,
    RopeSpec,
    check_activation,
    check_positive,
    get,
)
from optima_jax.models.attention import attend
from optima_jax.models.transformer import Embedding, Linear, activation

POSITION_OFFSET = 2  # OPT's learned position table starts at index 2 (fairseq padding convention)


def config_from_hf(d: dict, where: str = "config.json") -> ModelConfig:
    """HF OPTConfig dict -> ModelConfig."""
    heads = int(get(d, "num_attention_heads", where=where))
    hidden = int(get(d, "hidden_size", where=where))
    if hidden % heads:
        raise ModelConfigError(f"{where}: hidden_size={hidden} is not a multiple of num_attention_heads={heads}")
    head_dim = hidden // heads
    n = int(get(d, "num_hidden_layers", where=where))
    proj = d.get("word_embed_proj_dim")
    proj = hidden if proj is None else int(proj)
    if proj <= 0:
        raise ModelConfigError(f"{where}: word_embed_proj_dim must be a positive integer, got {proj!r}")
    max_pos = int(get(d, "max_position_embeddings", 2048, where=where))
    if max_pos <= 0:
        raise ModelConfigError(f"{where}: max_position_embeddings must be positive, got {max_pos}")
    pre_norm = bool(d.get("do_layer_norm_before", True))
    bias = bool(d.get("enable_bias", True))
    rope = RopeSpec(theta=10000.0)  # unused: OPT has learned absolute positions
    cfg = ModelConfig(
        model_type="opt",
        vocab_size=int(get(d, "vocab_size", where=where)),
        hidden_size=hidden,
        intermediate_size=int(get(d, "ffn_dim", where=where)),
        num_layers=n,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=head_dim,
        rms_norm_eps=1e-5,  # torch.nn.LayerNorm's default eps
        hidden_act=check_activation(d.get("activation_function") or "relu", where),
        layer_types=(FULL,) * n,
        rope_full=rope,
        rope_sliding=rope,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bias,
        attn_scale=float(head_dim) ** -0.5,
        learned_positions=max_pos + POSITION_OFFSET,
        position_offset=POSITION_OFFSET,
        pre_norm=pre_norm,
        final_norm=pre_norm and not bool(d.get("_remove_final_layer_norm", False)),
        norm_affine=bool(d.get("layer_norm_elementwise_affine", True)),
        embed_dim=None if proj == hidden else proj,
        hf_config=dict(d),
    )
    return check_positive(cfg, where)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """OPT position ids from a 0/1 attention mask [B, T], as transformers computes them:
    ``cumsum(mask) * mask - 1`` (padding gets -1; unpadded input gives ``arange(T)``)."""
    m = jnp.asarray(attention_mask, jnp.int32)
    return jnp.cumsum(m, axis=1) * m - 1


class LayerNorm(nnx.Module):
    """torch.nn.LayerNorm over the last axis: statistics and affine in float32, result in the input dtype."""

    def __init__(self, dim: int, eps: float, affine: bool, dtype):
        self.weight = nnx.Param(jnp.ones((dim,), dtype)) if affine else None
        self.bias = nnx.Param(jnp.zeros((dim,), dtype)) if affine else None
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


class OPTAttention(nnx.Module):
    """Multi-head attention without rotary embeddings; q is scaled by head_dim^-0.5 after q_proj (as HF)."""

    def __init__(self, cfg: ModelConfig, dtype):
        d = cfg.hidden_size
        self.q_proj = Linear(d, d, cfg.qkv_bias, dtype)
        self.k_proj = Linear(d, d, cfg.qkv_bias, dtype)
        self.v_proj = Linear(d, d, cfg.qkv_bias, dtype)
        self.out_proj = Linear(d, d, cfg.o_bias, dtype)
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.scale = cfg.attn_scale

    def __call__(self, x: jax.Array, inputs: dict | None = None) -> jax.Array:
        """x [B, T, D] -> [B, T, D]. Fills ``inputs`` with the out_proj input when given."""
        b, t, _ = x.shape
        h, hd = self.num_heads, self.head_dim
        q = self.q_proj(x)
        q = (q * jnp.asarray(self.scale, q.dtype)).reshape(b, t, h, hd)
        k = self.k_proj(x).reshape(b, t, h, hd)
        v = self.v_proj(x).reshape(b, t, h, hd)
        out = attend(q, k, v, scale=None)
        if inputs is not None:
            inputs["self_attn.out_proj"] = out
        return self.out_proj(out)


class OPTDecoderLayer(nnx.Module):
    """One OPT block: LayerNorm (before or after, ``cfg.pre_norm``) around attention and the fc1/act/fc2 FFN."""

    def __init__(self, cfg: ModelConfig, dtype):
        d = cfg.hidden_size
        self.pre_norm = cfg.pre_norm
        self.act = cfg.hidden_act
        self.self_attn = OPTAttention(cfg, dtype)
        self.self_attn_layer_norm = LayerNorm(d, cfg.rms_norm_eps, cfg.norm_affine, dtype)
        self.fc1 = Linear(d, cfg.intermediate_size, cfg.mlp_bias, dtype)
        self.fc2 = Linear(cfg.intermediate_size, d, cfg.mlp_bias, dtype)
        self.final_layer_norm = LayerNorm(d, cfg.rms_norm_eps, cfg.norm_affine, dtype)

    def __call__(self, h: jax.Array, positions: jax.Array | None = None, capture: bool = False):
        """h [B, T, D] -> h_out [B, T, D]; with capture, (h_out, inputs) where inputs maps every linear name to
        its input activations [B, T, in] (q/k/v share one array object). ``positions`` is unused (learned
        positions are added by the embedding); it is accepted for the block API."""
        inputs: dict | None = {} if capture else None
        x = self.self_attn_layer_norm(h) if self.pre_norm else h
        if capture:
            inputs["self_attn.q_proj"] = inputs["self_attn.k_proj"] = inputs["self_attn.v_proj"] = x
        h = h + self.self_attn(x, inputs)
        if not self.pre_norm:
            h = self.self_attn_layer_norm(h)
        x = self.final_layer_norm(h) if self.pre_norm else h
        a = activation(self.act, self.fc1(x))
        if capture:
            inputs["fc1"] = x
            inputs["fc2"] = a
        h = h + self.fc2(a)
        if not self.pre_norm:
            h = self.final_layer_norm(h)
        if capture:
            order = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"]
            return h, {k: inputs[k] for k in order}
        return h


class OPTDecoder(nnx.Module):
    """HF's ``model.decoder.``: embeddings, optional projections, layers, final LayerNorm."""

    def __init__(self, cfg: ModelConfig, dtype):
        d, p = cfg.hidden_size, cfg.embed_dim or cfg.hidden_size
        self.embed_tokens = Embedding(cfg.vocab_size, p, dtype)
        self.embed_positions = Embedding(cfg.learned_positions, d, dtype)
        self.project_in = Linear(p, d, False, dtype) if cfg.embed_dim is not None else None
        self.project_out = Linear(d, p, False, dtype) if cfg.embed_dim is not None else None
        self.layers = nnx.List([OPTDecoderLayer(cfg, dtype) for _ in range(cfg.num_layers)])
        self.final_layer_norm = LayerNorm(d, cfg.rms_norm_eps, cfg.norm_affine, dtype) if cfg.final_norm else None


class OPTModel(nnx.Module):
    """HF's ``model.`` subtree of ``OPTForCausalLM`` (only ``decoder``), with the backbone interface
    :class:`models.causal_lm.CausalLM` uses."""

    def __init__(self, cfg: ModelConfig, dtype):
        self.decoder = OPTDecoder(cfg, dtype)
        self.offset = cfg.position_offset
        self.head_features = cfg.embed_dim or cfg.hidden_size

    @property
    def layers(self):
        return self.decoder.layers

    def embed(self, ids: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """ids int [B, T], positions int [B|1, T] (default ``arange(T)``; see :func:`positions_from_mask`) ->
        h [B, T, D] = project_in(token embedding) + position table[positions + 2]."""
        dec = self.decoder
        h = jnp.take(dec.embed_tokens.weight[...], ids, axis=0)
        if dec.project_in is not None:
            h = dec.project_in(h)
        t, rows = ids.shape[1], dec.embed_positions.weight.shape[0]
        if t + self.offset > rows:
            raise ModelConfigError(f"OPT: sequence length {t} exceeds max_position_embeddings={rows - self.offset}")
        if positions is None:
            positions = jnp.arange(t)[None]
        pos = jnp.take(dec.embed_positions.weight[...], jnp.asarray(positions) + self.offset, axis=0)
        return h + pos.astype(h.dtype)

    def head_input(self, h: jax.Array) -> jax.Array:
        """h [B, T, D] -> LM-head input [B, T, P]: final LayerNorm (pre-norm models), then project_out."""
        dec = self.decoder
        if dec.final_layer_norm is not None:
            h = dec.final_layer_norm(h)
        if dec.project_out is not None:
            h = dec.project_out(h)
        return h

    def input_embeddings(self) -> jax.Array:
        """The token embedding table [V, P] (the LM head when embeddings are tied)."""
        return self.decoder.embed_tokens.weight[...]
