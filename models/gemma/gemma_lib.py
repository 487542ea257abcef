"""The layout of DeepMind's ``gemma`` library (``gm.nn.Transformer`` params and ``TransformerConfig``), both ways.

Our params are flat HF names in HF layout (``model.layers.3.self_attn.q_proj.weight``, ``(out, in)``); the
library's are the nested tree of ``model.init()['params']``:

    embedder/input_embedding                 (V, D)      = embed_tokens (the library always ties the head)
    layer_i/attn/q_einsum/w                  (N, D, H)   q_proj (N·H, D) split per head, transposed
    layer_i/attn/kv_einsum/w                 (2, K, D, H) k_proj, v_proj stacked (when K != N)
    layer_i/attn/qkv_einsum/w                (3, N, D, H) q, k, v stacked (when K == N)
    layer_i/attn/attn_vec_einsum/w           (N, H, D)   o_proj (D, N·H) transposed, split per head
    layer_i/attn/_query_norm/scale, _key_norm/scale (H)  q_norm, k_norm (Gemma 3)
    layer_i/mlp/gating_einsum                (2, F, D) if transpose_gating_einsum else (2, D, F): gate, up
    layer_i/mlp/linear                       (F, D)      down_proj (D, F) transposed
    layer_i/{pre_attention,post_attention,pre_ffw,post_ffw}_norm/scale, final_norm/scale (D)

Norms: both the library and HF Gemma compute ``x · rsqrt(mean x² + 1e-6) · (1 + scale)``, so scales copy as
they are. Pure reshapes and transposes: pruned entries stay exactly zero.

``VARIANTS`` is the library's named architectures as data (checked against the library itself in
tests/test_gemma_lib.py); ``lib_config`` maps our ModelConfig to ``TransformerConfig`` fields (JSON-able: enums
by name), ``hf_config_from_lib`` maps them back to an HF config dict, so a library checkpoint loads through the
same parsers as an HF one.
"""

from __future__ import annotations

import math

import numpy as np

from optima_jax.models.config import FULL, SLIDING, ModelConfig
from optima_jax.models.errors import ModelConfigError, ParamsError


class GemmaLibError(ModelConfigError):
    """A model the gemma library cannot express, or a library checkpoint that does not match its config."""


_LOCAL, _GLOBAL = "LOCAL_SLIDING", "GLOBAL"
_BY_HEAD_DIM = "BY_ONE_OVER_SQRT_HEAD_DIM"
_BY_EMBED_PER_HEAD = "BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS"
_GEMMA3_PATTERN = (_LOCAL,) * 5 + (_GLOBAL,)
_GELU_TANH = ("gelu_pytorch_tanh", "gelu_new")  # the library's MLP uses flax's nn.gelu (tanh approximation)


def _pattern(pattern: tuple[str, ...], n: int) -> list[str]:
    return [pattern[i % len(pattern)] for i in range(n)]


def _variant(n_layers, vocab, d, f, heads, hd, kv, *, gemma3, window, qscale=_BY_HEAD_DIM, transpose=True, scale=1.0):
    return {
        "num_embed": vocab,
        "embed_dim": d,
        "hidden_dim": f,
        "num_heads": heads,
        "head_dim": hd,
        "num_kv_heads": kv,
        "final_logit_softcap": None if gemma3 else 30.0,
        "use_post_attn_norm": True,
        "use_post_ffw_norm": True,
        "attention_types": _pattern(_GEMMA3_PATTERN if gemma3 else (_LOCAL, _GLOBAL), n_layers),
        "query_pre_attn_norm": qscale,
        "attn_logits_soft_cap": None if gemma3 else 50.0,
        "sliding_window_size": window,
        "transpose_gating_einsum": transpose,
        "use_qk_norm": gemma3,
        "local_base_frequency": 10_000,
        "global_base_frequency": 1_000_000 if gemma3 else 10_000,
        "local_scale_factor": 1.0,
        "global_scale_factor": scale,
    }


# gm.nn class name -> (TransformerConfig fields of its text model, constructor kwargs for a text-only checkpoint).
VARIANTS: dict[str, tuple[dict, dict]] = {
    "Gemma2_2B": (_variant(26, 256128, 2304, 9216, 8, 256, 4, gemma3=False, window=4096, transpose=False), {}),
    "Gemma2_9B": (_variant(42, 256128, 3584, 14336, 16, 256, 8, gemma3=False, window=4096), {}),
    "Gemma2_27B": (
        _variant(46, 256128, 4608, 36864, 32, 128, 16, gemma3=False, window=4096, qscale=_BY_EMBED_PER_HEAD),
        {},
    ),
    "Gemma3_270M": (_variant(18, 262144, 640, 2048, 4, 256, 1, gemma3=True, window=512), {}),
    "Gemma3_1B": (_variant(26, 262144, 1152, 6912, 4, 256, 1, gemma3=True, window=512), {}),
    "Gemma3_4B": (
        _variant(34, 262144, 2560, 10240, 8, 256, 4, gemma3=True, window=1024, scale=8.0),
        {"text_only": True},
    ),
    "Gemma3_12B": (
        _variant(48, 262144, 3840, 15360, 16, 256, 8, gemma3=True, window=1024, scale=8.0),
        {"text_only": True},
    ),
    "Gemma3_27B": (
        _variant(62, 262144, 5376, 21504, 32, 128, 16, gemma3=True, window=1024, qscale=_BY_EMBED_PER_HEAD, scale=8.0),
        {"text_only": True},
    ),
}


def _rope_fields(spec, which: str) -> tuple[int, float]:
    if spec.kind == "default":
        return spec.theta, 1.0
    if spec.kind == "linear":
        return spec.theta, float(spec.factor)
    raise GemmaLibError(f"the gemma library has no {spec.kind!r} rope scaling ({which} layers); only linear")


def _as_int(x: float):
    return int(x) if float(x).is_integer() else float(x)


def lib_config(cfg: ModelConfig, where: str = "model") -> dict:
    """Our Gemma 2 / Gemma 3 text config -> the library's ``TransformerConfig`` fields (enums by member name).

    Anything the library cannot express is a one-line GemmaLibError naming it (other families, untied
    embeddings, biases, another norm epsilon or activation, a query scale that is neither 1/√head_dim nor
    1/√(embed_dim / num_heads), rope scaling other than linear).
    """
    if cfg.model_type not in ("gemma2", "gemma3_text"):
        raise GemmaLibError(
            f"{where}: the gemma library takes Gemma 2 and Gemma 3 text models; this is {cfg.model_type!r}"
        )
    problems = []
    if not cfg.tie_word_embeddings:
        problems.append("untied embeddings (the library always ties the LM head)")
    if cfg.qkv_bias or cfg.o_bias or cfg.mlp_bias:
        problems.append("linear biases")
    if not math.isclose(cfg.rms_norm_eps, 1e-6, rel_tol=1e-3):
        problems.append(f"rms_norm_eps={cfg.rms_norm_eps:g} (the library uses 1e-6)")
    if cfg.hidden_act not in _GELU_TANH:
        problems.append(f"activation {cfg.hidden_act!r} (the library uses tanh-approximated GELU)")
    if not (cfg.norm_plus_one and cfg.sandwich_norm and cfg.embed_scale):
        problems.append("a non-Gemma norm or embedding convention")
    if problems:
        raise GemmaLibError(f"{where}: the gemma library cannot express {'; '.join(problems)}")
    if math.isclose(cfg.attn_scale, cfg.head_dim**-0.5, rel_tol=1e-6):
        qscale = _BY_HEAD_DIM
    elif math.isclose(cfg.attn_scale, (cfg.hidden_size // cfg.num_heads) ** -0.5, rel_tol=1e-6):
        qscale = _BY_EMBED_PER_HEAD
    else:
        raise GemmaLibError(
            f"{where}: query_pre_attn_scalar={cfg.attn_scale**-2:g} is neither head_dim={cfg.head_dim} nor "
            f"hidden_size/num_heads={cfg.hidden_size // cfg.num_heads}: the gemma library cannot express it"
        )
    local_theta, local_scale = _rope_fields(cfg.rope_sliding, "sliding")
    global_theta, global_scale = _rope_fields(cfg.rope_full, "global")
    return {
        "num_embed": cfg.vocab_size,
        "embed_dim": cfg.hidden_size,
        "hidden_dim": cfg.intermediate_size,
        "num_heads": cfg.num_heads,
        "head_dim": cfg.head_dim,
        "num_kv_heads": cfg.num_kv_heads,
        "final_logit_softcap": cfg.final_logit_softcap,
        "use_post_attn_norm": True,
        "use_post_ffw_norm": True,
        "attention_types": [_LOCAL if t == SLIDING else _GLOBAL for t in cfg.layer_types],
        "query_pre_attn_norm": qscale,
        "attn_logits_soft_cap": cfg.attn_logit_softcap,
        "sliding_window_size": cfg.sliding_window if SLIDING in cfg.layer_types else None,
        # The library's Gemma 2 2B stores gating as (2, D, F); every later model as (2, F, D). Ours is a fresh
        # checkpoint, so the one layout is chosen: (2, F, D), as Gemma 3 and the larger Gemma 2 models.
        "transpose_gating_einsum": _same_sizes_as(cfg) != "Gemma2_2B",
        "use_qk_norm": cfg.qk_norm,
        "local_base_frequency": _as_int(local_theta),
        "global_base_frequency": _as_int(global_theta),
        "local_scale_factor": local_scale,
        "global_scale_factor": global_scale,
    }


def _same_sizes_as(cfg: ModelConfig) -> str | None:
    """The named variant with this model's sizes and layer count (so Gemma 2 2B keeps its (2, D, F) gating)."""
    for name, (fields, _) in VARIANTS.items():
        sizes = (fields["num_embed"], fields["embed_dim"], fields["hidden_dim"], fields["num_heads"])
        if (
            sizes == (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_heads)
            and len(fields["attention_types"]) == cfg.num_layers
        ):
            return name
    return None


def variant_name(fields: dict) -> str | None:
    """The ``gm.nn`` class whose text config equals these fields, or None (then build ``gm.nn.Transformer``)."""
    for name, (known, _) in VARIANTS.items():
        if known == fields:
            return name
    return None


def hf_config_from_lib(fields: dict, where: str = "gemma config") -> dict:
    """Library ``TransformerConfig`` fields -> the equivalent HF ``gemma2`` / ``gemma3_text`` config dict."""
    try:
        n_layers = len(fields["attention_types"])
        d, heads, hd = int(fields["embed_dim"]), int(fields["num_heads"]), int(fields["head_dim"])
        layer_types = [SLIDING if t == _LOCAL else FULL for t in fields["attention_types"]]
        qnorm = fields.get("query_pre_attn_norm", _BY_HEAD_DIM)
        gemma3 = bool(fields.get("use_qk_norm", False))
        post = bool(fields.get("use_post_attn_norm")) and bool(fields.get("use_post_ffw_norm"))
        out = {
            "model_type": "gemma3_text" if gemma3 else "gemma2",
            "architectures": ["Gemma3ForCausalLM" if gemma3 else "Gemma2ForCausalLM"],
            "vocab_size": int(fields["num_embed"]),
            "hidden_size": d,
            "intermediate_size": int(fields["hidden_dim"]),
            "num_hidden_layers": n_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": int(fields["num_kv_heads"]),
            "head_dim": hd,
        }
    except (KeyError, TypeError, ValueError) as e:
        raise GemmaLibError(f"{where}: not a gemma TransformerConfig ({type(e).__name__}: {e})") from None
    if not post:
        raise GemmaLibError(f"{where}: Gemma 1 layouts (no post-attention/post-ffw norms) are not ported")
    if bad := [t for t in fields["attention_types"] if t not in (_LOCAL, _GLOBAL)]:
        raise GemmaLibError(f"{where}: unknown attention type {bad[0]!r}")
    if qnorm == _BY_HEAD_DIM:
        scalar = hd
    elif qnorm == _BY_EMBED_PER_HEAD:
        scalar = d // heads
    else:
        raise GemmaLibError(f"{where}: query_pre_attn_norm {qnorm!r} is not ported")
    local_theta, global_theta = fields.get("local_base_frequency", 10_000), fields.get("global_base_frequency", 10_000)
    local_scale, global_scale = fields.get("local_scale_factor", 1.0), fields.get("global_scale_factor", 1.0)
    out.update(
        {
            "layer_types": layer_types,
            "sliding_window": fields.get("sliding_window_size"),
            "query_pre_attn_scalar": scalar,
            "attn_logit_softcapping": fields.get("attn_logits_soft_cap"),
            "final_logit_softcapping": fields.get("final_logit_softcap"),
            "hidden_activation": "gelu_pytorch_tanh",
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
            "rope_theta": global_theta,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 2,
        }
    )
    if gemma3:
        out["rope_local_base_freq"] = local_theta
        if global_scale != 1.0:
            out["rope_scaling"] = {"rope_type": "linear", "factor": float(global_scale)}
        if local_scale != 1.0:
            raise GemmaLibError(f"{where}: local_scale_factor={local_scale} (sliding-layer rope scaling) is not ported")
    elif (local_theta, local_scale) != (global_theta, global_scale):
        raise GemmaLibError(f"{where}: Gemma 2 with different local and global rope is not ported")
    return out


# ------------------------------------------------------------------------------------------- params, both ways
def _heads_in(w: np.ndarray, n: int) -> np.ndarray:
    """(n·H, D) HF projection -> (n, D, H)."""
    return w.reshape(n, -1, w.shape[1]).transpose(0, 2, 1)


def _heads_out(w: np.ndarray) -> np.ndarray:
    """(n, D, H) -> (n·H, D)."""
    n, d, h = w.shape
    return w.transpose(0, 2, 1).reshape(n * h, d)


_NORMS = {
    "input_layernorm": "pre_attention_norm",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "pre_ffw_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}


def to_lib_params(params: dict, cfg: ModelConfig, fields: dict | None = None) -> dict:
    """Flat HF-named params (HF layout) -> the library's nested params tree (numpy, same dtype)."""
    fields = lib_config(cfg) if fields is None else fields
    p = {k: np.asarray(v) for k, v in params.items()}
    n, k = cfg.num_heads, cfg.num_kv_heads
    tree: dict = {"embedder": {"input_embedding": p["model.embed_tokens.weight"]}}
    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."
        q, kk, v = (p[pre + f"self_attn.{x}_proj.weight"] for x in "qkv")
        o = p[pre + "self_attn.o_proj.weight"]
        attn: dict = {"attn_vec_einsum": {"w": o.T.reshape(n, cfg.head_dim, cfg.hidden_size)}}
        if n == k:
            attn["qkv_einsum"] = {"w": np.stack([_heads_in(q, n), _heads_in(kk, n), _heads_in(v, n)])}
        else:
            attn["q_einsum"] = {"w": _heads_in(q, n)}
            attn["kv_einsum"] = {"w": np.stack([_heads_in(kk, k), _heads_in(v, k)])}
        if cfg.qk_norm:
            attn["_query_norm"] = {"scale": p[pre + "self_attn.q_norm.weight"]}
            attn["_key_norm"] = {"scale": p[pre + "self_attn.k_norm.weight"]}
        gate, up = p[pre + "mlp.gate_proj.weight"], p[pre + "mlp.up_proj.weight"]
        gating = np.stack([gate, up]) if fields["transpose_gating_einsum"] else np.stack([gate.T, up.T])
        layer = {"attn": attn, "mlp": {"gating_einsum": gating, "linear": p[pre + "mlp.down_proj.weight"].T}}
        for hf, lib in _NORMS.items():
            layer[lib] = {"scale": p[pre + hf + ".weight"]}
        tree[f"layer_{i}"] = layer
    tree["final_norm"] = {"scale": p["model.norm.weight"]}
    return tree


def flat_layout_to_nested(tree: dict) -> dict:
    """The library's legacy FLAT checkpoint (``transformer/layer_0/attn/q_einsum`` -> {'w': ...}, MLP leaves
    under 'w' too) -> the NESTED tree of ``model.init()['params']``; a NESTED tree is returned as is."""
    if not tree or not all(isinstance(k, str) and k.startswith("transformer/") for k in tree):
        return tree
    out: dict = {}
    for key, leaf in tree.items():
        path = key.split("/")[1:]
        if path[-2:-1] == ["mlp"] and isinstance(leaf, dict) and set(leaf) == {"w"}:
            leaf = leaf["w"]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = leaf
    return out


def _leaf(tree: dict, path: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    node = tree
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"{where}: missing tensor {path} (expected shape {shape})")
        node = node[part]
    got = tuple(np.shape(node))
    if got != tuple(shape):
        raise ParamsError(f"{where}: tensor {path} has shape {got}, expected {tuple(shape)}")
    return np.asarray(node)


def from_lib_params(tree: dict, cfg: ModelConfig, fields: dict, where: str = "gemma checkpoint") -> dict:
    """The library's nested params tree -> flat HF-named params (HF layout). A missing or mis-shaped tensor is a
    one-line ParamsError naming its library path."""
    tree = flat_layout_to_nested(tree)
    n, k, d, h, f = cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    out = {"model.embed_tokens.weight": _leaf(tree, "embedder/input_embedding", (cfg.vocab_size, d), where)}
    for i in range(cfg.num_layers):
        pre, lp = f"model.layers.{i}.", f"layer_{i}"
        if n == k:
            qkv = _leaf(tree, f"{lp}/attn/qkv_einsum/w", (3, n, d, h), where)
            q, kk, v = (_heads_out(x) for x in qkv)
        else:
            q = _heads_out(_leaf(tree, f"{lp}/attn/q_einsum/w", (n, d, h), where))
            kv = _leaf(tree, f"{lp}/attn/kv_einsum/w", (2, k, d, h), where)
            kk, v = _heads_out(kv[0]), _heads_out(kv[1])
        out[pre + "self_attn.q_proj.weight"] = q
        out[pre + "self_attn.k_proj.weight"] = kk
        out[pre + "self_attn.v_proj.weight"] = v
        o = _leaf(tree, f"{lp}/attn/attn_vec_einsum/w", (n, h, d), where)
        out[pre + "self_attn.o_proj.weight"] = o.reshape(n * h, d).T
        if cfg.qk_norm:
            out[pre + "self_attn.q_norm.weight"] = _leaf(tree, f"{lp}/attn/_query_norm/scale", (h,), where)
            out[pre + "self_attn.k_norm.weight"] = _leaf(tree, f"{lp}/attn/_key_norm/scale", (h,), where)
        if fields.get("transpose_gating_einsum", False):
            gating = _leaf(tree, f"{lp}/mlp/gating_einsum", (2, f, d), where)
            gate, up = gating[0], gating[1]
        else:
            gating = _leaf(tree, f"{lp}/mlp/gating_einsum", (2, d, f), where)
            gate, up = gating[0].T, gating[1].T
        out[pre + "mlp.gate_proj.weight"] = gate
        out[pre + "mlp.up_proj.weight"] = up
        out[pre + "mlp.down_proj.weight"] = _leaf(tree, f"{lp}/mlp/linear", (f, d), where).T
        for hf, lib in _NORMS.items():
            out[pre + hf + ".weight"] = _leaf(tree, f"{lp}/{lib}/scale", (d,), where)
    out["model.norm.weight"] = _leaf(tree, "final_norm/scale", (d,), where)
    return {name: np.ascontiguousarray(v) for name, v in out.items()}
