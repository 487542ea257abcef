"""Runs DeepMind's `gemma` library (3.3.0) as a reference implementation.

Run with the python of the venv made by tests/gemma_lib/setup_env.sh, never
with the project's python: this script imports only the venv's `gemma`, jax,
flax and orbax, nothing from optima_jax.

Modes (the model is `--model NAME`, a `gm.nn` class such as Gemma3_270M, or
`--config-json PATH`, a small custom `gm.nn.config.TransformerConfig`):

  --init-out DIR              random params from `model.init`, saved with
                              `gm.ckpts.save_params` (Orbax StandardCheckpointer)
  --ckpt DIR --tokens T.npy --out O.npz
                              float32 full-sequence forward; O.npz["logits"] is
                              float32 (B, T, V)
  --ckpt DIR --sample PROMPT --tokenizer SPM.model --max-new-tokens N
                              greedy `gm.text.Sampler` generation, printed
  --dump-config               the model's TransformerConfig fields as JSON
                              (enums by member name, without vision_encoder)

Config JSON: any TransformerConfig field except vision_encoder:
  num_embed, embed_dim, hidden_dim, num_heads, head_dim, num_kv_heads,
  final_logit_softcap (number or null), use_post_attn_norm, use_post_ffw_norm,
  attention_types (list of "local_sliding" / "global"),
  query_pre_attn_norm ("BY_ONE_OVER_SQRT_HEAD_DIM" | "BY_EMBED_DIM_DIV_NUM_HEADS"
    | "BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS"),
  attn_logits_soft_cap (number or null), sliding_window_size, use_qk_norm,
  transpose_gating_einsum, local_base_frequency, global_base_frequency,
  local_scale_factor, global_scale_factor.
Extra keys: "base" (a gm.nn class name whose config is the starting point, the
other keys override it); "num_layers" (without "attention_types": the first
num_layers entries of the base's layer types, or `attention_pattern` repeated);
"attention_pattern" (list of layer types, repeated to num_layers);
"vocab_size" (alias of num_embed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys


def _fail(msg: str) -> None:
    print(f"gemma_forward.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def _attention_type(gm, name):
    key = str(name).strip().upper()
    aliases = {
        "LOCAL": "LOCAL_SLIDING",
        "SLIDING": "LOCAL_SLIDING",
        "SLIDING_ATTENTION": "LOCAL_SLIDING",
        "FULL_ATTENTION": "GLOBAL",
        "FULL": "GLOBAL",
    }
    key = aliases.get(key, key)
    try:
        return gm.nn.AttentionType[key]
    except KeyError:
        _fail(f"unknown attention type {name!r} (use local_sliding or global)")


def config_from_json(gm, path):
    """Builds a `TransformerConfig` from a JSON dict (see module docstring)."""
    with open(path) as f:
        spec = dict(json.load(f))
    config_mod = gm.nn.config
    fields = {f.name for f in dataclasses.fields(config_mod.TransformerConfig)}

    base = spec.pop("base", None)
    if "vocab_size" in spec:
        spec["num_embed"] = spec.pop("vocab_size")
    num_layers = spec.pop("num_layers", None)
    pattern = spec.pop("attention_pattern", None)

    if "attention_types" in spec:
        spec["attention_types"] = tuple(_attention_type(gm, t) for t in spec["attention_types"])
    elif pattern is not None:
        if num_layers is None:
            _fail("attention_pattern needs num_layers")
        spec["attention_types"] = config_mod.make_attention_layers_types(
            tuple(_attention_type(gm, t) for t in pattern), num_layers=num_layers
        )
    if num_layers is not None and len(spec.get("attention_types", ())) not in (0, num_layers):
        _fail("num_layers disagrees with attention_types")

    if "query_pre_attn_norm" in spec:
        name = str(spec["query_pre_attn_norm"]).strip().upper()
        try:
            spec["query_pre_attn_norm"] = config_mod.QueryPreAttentionNormalisation[name]
        except KeyError:
            _fail(f"unknown query_pre_attn_norm {name!r}")

    unknown = sorted(set(spec) - fields)
    if unknown or "vision_encoder" in spec:
        _fail(f"unknown or unsupported config keys: {unknown or ['vision_encoder']}")

    if base is not None:
        base_cls = getattr(gm.nn, base, None)
        if base_cls is None:
            _fail(f"unknown base model {base!r}")
        cfg = base_cls.config
        if num_layers is not None and "attention_types" not in spec:
            spec["attention_types"] = tuple(cfg.attention_types)[:num_layers]
        # dataclasses.replace re-runs __init__, so cached num_layers is recomputed.
        return dataclasses.replace(cfg, **spec)
    if "attention_types" not in spec:
        _fail("config JSON needs attention_types (or num_layers + attention_pattern, or a base)")
    return config_mod.TransformerConfig(**spec)


def build_model(gm, jnp, args):
    if args.model:
        cls = getattr(gm.nn, args.model, None)
        if cls is None or not isinstance(cls, type):
            _fail(f"no gm.nn class named {args.model!r}")
        return cls(dtype=jnp.float32)
    return gm.nn.Transformer(config=config_from_json(gm, args.config_json), dtype=jnp.float32)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="gm.nn class name, e.g. Gemma3_270M")
    src.add_argument("--config-json", help="JSON dict of TransformerConfig fields")
    p.add_argument("--ckpt", help="Orbax params checkpoint for gm.ckpts.load_params")
    p.add_argument("--tokens", help=".npy int32 (B, T) token ids")
    p.add_argument("--out", help=".npz to write float32 logits (B, T, V) as 'logits'")
    p.add_argument(
        "--gemma-padding",
        action="store_true",
        help="use gemma's default mask/positions, where token id 0 is"
        " padding; default: explicit positions 0..T-1 and a plain"
        " causal mask, so every token (0 included) is attended",
    )
    p.add_argument("--init-out", help="save random model.init params here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init-norm-std",
        type=float,
        default=0.0,
        help="with --init-out: replace every RMSNorm 'scale' (zeros"
        " in gemma's init) by N(0, std) so the norm convention is"
        " exercised",
    )
    p.add_argument("--sample", metavar="PROMPT", help="prompt to sample from")
    p.add_argument("--tokenizer", help="SentencePiece .model for --sample")
    p.add_argument(
        "--tokenizer-version",
        type=int,
        choices=(2, 3),
        default=None,
        help="Gemma2Tokenizer or Gemma3Tokenizer (default: the model's, else 3)",
    )
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--cache-length", type=int, default=1024)
    p.add_argument("--print-tree", action="store_true", help="print the param tree (key path: shape dtype)")
    p.add_argument("--dump-config", action="store_true", help="print the model's config fields as JSON")
    args = p.parse_args(argv)

    modes = [bool(args.init_out), bool(args.out), bool(args.sample), args.dump_config]
    if sum(modes) != 1:
        _fail("give exactly one of --init-out, --out (with --tokens), --sample, --dump-config")

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax  # pylint: disable=g-import-not-at-top

    jax.config.update("jax_default_matmul_precision", "highest")
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from gemma import gm  # pylint: disable=g-import-not-at-top

    model = build_model(gm, jnp, args)
    if args.dump_config:
        cfg = model.config
        out = {}
        for f in dataclasses.fields(cfg):
            if f.name == "vision_encoder":
                continue
            v = getattr(cfg, f.name)
            if isinstance(v, (tuple, list)):
                v = [getattr(x, "name", x) for x in v]
            out[f.name] = getattr(v, "name", v)
        print(json.dumps(out))
        return

    def print_tree(params):
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            key = "/".join(str(getattr(k, "key", k)) for k in path)
            print(f"{key}: {tuple(leaf.shape)} {leaf.dtype}")

    if args.init_out:
        out = os.path.abspath(args.init_out)
        if os.path.exists(out):
            _fail(f"{out} exists")
        dummy = jnp.ones((1, 4), dtype=jnp.int32)
        params = model.init(jax.random.PRNGKey(args.seed), dummy)["params"]
        if args.init_norm_std:
            key = jax.random.PRNGKey(args.seed + 1)
            leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
            new = []
            for i, (path, leaf) in enumerate(leaves):
                if str(getattr(path[-1], "key", "")) == "scale":
                    leaf = args.init_norm_std * jax.random.normal(jax.random.fold_in(key, i), leaf.shape, leaf.dtype)
                new.append(leaf)
            params = jax.tree_util.tree_unflatten(treedef, new)
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
        if args.print_tree:
            print_tree(params)
        gm.ckpts.save_params(params, out, wait_until_finished=True)
        print(out)
        return

    if not args.ckpt:
        _fail("--ckpt is required")
    params = gm.ckpts.load_params(os.path.abspath(args.ckpt))
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    if args.print_tree:
        print_tree(params)

    if args.out:
        if not args.tokens:
            _fail("--out needs --tokens")
        tokens = np.load(args.tokens)
        if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
            _fail(f"--tokens must be an integer (B, T) array, got {tokens.dtype} {tokens.shape}")
        tokens = jnp.asarray(tokens, jnp.int32)
        b, t = tokens.shape
        kwargs = {}
        if not args.gemma_padding:
            kwargs["positions"] = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
            kwargs["attention_mask"] = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), dtype=jnp.bool_)), (b, t, t))
        output = model.apply({"params": params}, tokens, return_last_only=False, **kwargs)
        logits = np.asarray(output.logits, dtype=np.float32)
        np.savez(args.out, logits=logits)
        print(f"logits {logits.shape} finite={bool(np.isfinite(logits).all())}")
        return

    # --sample
    if not args.tokenizer:
        _fail("--sample needs --tokenizer")
    version = args.tokenizer_version or model.INFO.tokenizer_version or 3
    tok_cls = {2: gm.text.Gemma2Tokenizer, 3: gm.text.Gemma3Tokenizer}[version]
    tokenizer = tok_cls(path=os.path.abspath(args.tokenizer))
    sampler = gm.text.Sampler(
        model=model,
        params=params,
        tokenizer=tokenizer,
        cache_length=args.cache_length,
        max_out_length=max(args.max_new_tokens, 1),
    )
    text = sampler.sample(args.sample, max_new_tokens=args.max_new_tokens, rng=args.seed)
    print(text)


if __name__ == "__main__":
    main()
