"""Model configuration shared by all families: a frozen dataclass built from an HF ``config.json`` dict.

Family modules (``models/<family>/modeling.py``) turn an HF dict into a :class:`ModelConfig`; the core decoder
(``models/transformer.py``) only reads these fields, so families differ by config, not by code.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from optima_jax.errors import OptimaError


class ModelConfigError(OptimaError):
    """A config.json that cannot be turned into a supported model."""


class UnsupportedModelError(ModelConfigError):
    """An HF ``model_type`` this package does not port."""


FULL = "full_attention"
SLIDING = "sliding_attention"


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding parameters for one layer type.

    kind: "default" | "linear" | "llama3". ``inv_freq(head_dim)`` reproduces transformers' float32 computation.
    """

    theta: float
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def inv_freq(self, head_dim: int) -> np.ndarray:
        """float32 [head_dim // 2] inverse frequencies (radians per position)."""
        exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
        inv = (np.float32(1.0) / (np.float32(self.theta) ** exponent)).astype(np.float32)
        if self.kind == "default":
            return inv
        if self.kind == "linear":
            return (inv / np.float32(self.factor)).astype(np.float32)
        if self.kind == "llama3":
            old_len = float(self.original_max_position_embeddings)
            low_wl = old_len / self.low_freq_factor
            high_wl = old_len / self.high_freq_factor
            wavelen = np.float32(2 * math.pi) / inv
            scaled = np.where(wavelen > low_wl, inv / np.float32(self.factor), inv).astype(np.float32)
            smooth = (np.float32(old_len) / wavelen - np.float32(self.low_freq_factor)) / np.float32(
                self.high_freq_factor - self.low_freq_factor
            )
            smoothed = (1 - smooth) * scaled / np.float32(self.factor) + smooth * scaled
            medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
            return np.where(medium, smoothed, scaled).astype(np.float32)
        raise ModelConfigError(f"unsupported rope_type {self.kind!r} (supported: default, linear, llama3)")


SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
SUPPORTED_ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu_new", "gelu", "relu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the core decoder needs. Sizes are counts; ``head_dim`` is per head.

    ``hf_config`` is the original HF dict (for export); it is excluded from equality and hashing.
    """

    model_type: str  # HF model_type of the text model ("llama", "qwen2", "qwen3", "mistral", "gemma2", ...)
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    hidden_act: str
    layer_types: tuple[str, ...]  # per layer: "full_attention" | "sliding_attention"
    rope_full: RopeSpec
    rope_sliding: RopeSpec
    sliding_window: int | None = None  # a query attends to keys with q - window < k <= q
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norm_plus_one: bool = False  # Gemma: y = norm(x) * (1 + w), multiplied in float32
    sandwich_norm: bool = False  # Gemma 2/3: post-attention / pre- and post-feedforward norms
    qk_norm: bool = False  # Gemma 3, Qwen 3: RMSNorm over head_dim on q and k, before RoPE
    embed_scale: bool = False  # Gemma: embeddings times sqrt(hidden_size) (in the activation dtype)
    attn_scale: float = 1.0  # multiplier of q·k
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    # OPT-style decoders (learned absolute positions, LayerNorm with bias, optional post-norm and projections);
    # the rotary/RMSNorm families leave these at their defaults.
    learned_positions: int = 0  # rows of a learned position table (max positions + offset); 0: rotary
    position_offset: int = 0  # OPT: table index = position + 2
    pre_norm: bool = True  # OPT ``do_layer_norm_before``; False: post-norm blocks
    final_norm: bool = True  # a final norm before the LM head
    norm_affine: bool = True  # OPT ``layer_norm_elementwise_affine``
    embed_dim: int | None = None  # OPT ``word_embed_proj_dim`` when != hidden_size (project_in / project_out)
    # The family's BOS rule for every window it is fed (calibration, the run's perplexity, optima-eval, lm-eval):
    # "always" (Gemma: trained with <bos> first, its perplexity is meaningless without) | "tokenizer" (as the
    # tokenizer's default encoding does: LLaMA-3 adds <|begin_of_text|>, OPT </s>; SmolLM2 and Qwen add nothing).
    bos: str = "tokenizer"
    hf_config: dict = dataclasses.field(default_factory=dict, compare=False, hash=False, repr=False)

    def adds_bos(self, tokenizer) -> bool:
        """Whether windows fed to this model start with ``tokenizer.bos_token_id`` (the ``bos`` rule above)."""
        if self.bos == "always":
            if getattr(tokenizer, "bos_token_id", None) is None:
                raise ModelConfigError(f"{self.model_type} windows start with BOS, but the tokenizer has no BOS token")
            return True
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is None:
            return False
        ids = tokenizer("a").input_ids
        return len(ids) > 0 and ids[0] == bos

    def rope_for(self, layer_idx: int) -> RopeSpec:
        return self.rope_sliding if self.layer_types[layer_idx] == SLIDING else self.rope_full

    def window_for(self, layer_idx: int) -> int | None:
        return self.sliding_window if self.layer_types[layer_idx] == SLIDING else None


# ---------------------------------------------------------------- helpers used by the family parsers
_MISSING = object()


def get(d: dict, key: str, default: Any = _MISSING, where: str = "config.json") -> Any:
    """d[key]; if absent, ``default``; a required key that is absent is a clear error."""
    if key in d:
        return d[key]
    if default is _MISSING:
        raise ModelConfigError(f"{where}: required key {key!r} is missing")
    return default


def parse_rope_dict(rope: dict | None, theta: float, max_pos: int, where: str) -> RopeSpec:
    """One rope dict in either format (old ``rope_scaling`` or new ``rope_parameters``) -> RopeSpec."""
    rope = dict(rope or {})
    kind = rope.get("rope_type", rope.get("type", "default")) or "default"
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ModelConfigError(
            f"{where}: unsupported rope_type {kind!r} (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    theta = float(rope.get("rope_theta", theta))
    if kind == "default":
        return RopeSpec(theta=theta)
    if "factor" not in rope:
        raise ModelConfigError(f"{where}: rope_type {kind!r} needs 'factor'")
    if kind == "linear":
        return RopeSpec(theta=theta, kind="linear", factor=float(rope["factor"]))
    for k in ("low_freq_factor", "high_freq_factor"):
        if k not in rope:
            raise ModelConfigError(f"{where}: rope_type 'llama3' needs {k!r}")
    return RopeSpec(
        theta=theta,
        kind="llama3",
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_position_embeddings=int(rope.get("original_max_position_embeddings", max_pos)),
    )


def parse_rope(
    d: dict, default_theta: float, where: str, local_theta: float | None = None
) -> tuple[RopeSpec, RopeSpec]:
    """(full, sliding) rope specs from an HF dict in the old or new (transformers >= 5) format.

    ``local_theta``: the default base of sliding layers when the model has separate bases (Gemma 3); rope scaling
    from the old ``rope_scaling`` key then applies to full-attention layers only, as in transformers.
    """
    max_pos = int(d.get("max_position_embeddings") or 8192)
    params = d.get("rope_parameters")
    theta = d.get("rope_theta")
    theta = float(default_theta if theta is None else theta)
    if isinstance(params, dict) and (FULL in params or SLIDING in params):
        full = parse_rope_dict(params.get(FULL), theta, max_pos, where)
        sl_default = float(d.get("rope_local_base_freq") or (local_theta if local_theta is not None else theta))
        sliding = parse_rope_dict(params.get(SLIDING), sl_default, max_pos, where)
        return full, sliding
    rope = params if isinstance(params, dict) else d.get("rope_scaling")
    full = parse_rope_dict(rope, theta, max_pos, where)
    if local_theta is None:
        return full, full
    sl_theta = d.get("rope_local_base_freq")
    sliding = RopeSpec(theta=float(local_theta if sl_theta is None else sl_theta))
    return full, sliding


def check_activation(act: str, where: str) -> str:
    if act not in SUPPORTED_ACTIVATIONS:
        raise ModelConfigError(
            f"{where}: unsupported activation {act!r} (supported: {', '.join(SUPPORTED_ACTIVATIONS)})"
        )
    return act


def check_positive(cfg: ModelConfig, where: str) -> ModelConfig:
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
        v = getattr(cfg, f)
        if not isinstance(v, int) or v <= 0:
            raise ModelConfigError(f"{where}: {f} must be a positive integer, got {v!r}")
    if cfg.num_heads % cfg.num_kv_heads:
        raise ModelConfigError(
            f"{where}: num_attention_heads={cfg.num_heads} is not a multiple of num_key_value_heads={cfg.num_kv_heads}"
        )
    if len(cfg.layer_types) != cfg.num_layers:
        raise ModelConfigError(f"{where}: layer_types has {len(cfg.layer_types)} entries, expected {cfg.num_layers}")
    bad = [t for t in cfg.layer_types if t not in (FULL, SLIDING)]
    if bad:
        raise ModelConfigError(f"{where}: unknown layer type {bad[0]!r} in layer_types")
    if SLIDING in cfg.layer_types and not cfg.sliding_window:
        raise ModelConfigError(f"{where}: sliding_attention layers need a positive sliding_window")
    if cfg.head_dim % 2 and not cfg.learned_positions:
        raise ModelConfigError(f"{where}: head_dim={cfg.head_dim} must be even for rotary embeddings")
    return cfg
