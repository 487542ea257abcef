"""Qwen 3 and Mistral (and Ministral) against transformers: float32 logits on tiny random checkpoints that
exercise what these families change (per-head q/k RMSNorm with random weights, head_dim != hidden / heads, tied and
untied heads, attention biases, windows shorter than the sequence), the config defaults of transformers' classes,
sharded hub snapshots, GGUF files written the way llama.cpp writes them, the HF export, and a tiny prune through
the engine (which tensors are pruned, the Orbax checkpoint and the HF export reloaded)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

import tiny  # noqa: E402
from optima_jax import models  # noqa: E402
from optima_jax.errors import OptimaError  # noqa: E402
from optima_jax.models import api  # noqa: E402
from optima_jax.models.config import FULL, SLIDING  # noqa: E402
from tests.conftest import (  # noqa: E402
    TINY_BASE,
    assert_logits_match_float32,
    make_torch_model,
    saved_models,
    torch_logits,
)
from tests.test_gguf import _add_vocab, _llamacpp_permute, _tiny_vocab, write_stub_gguf  # noqa: E402

BASE = dict(TINY_BASE, num_hidden_layers=3)
WINDOW = 8  # the test sequences have 24 tokens

CASES = {
    "qwen3_untied": (
        "qwen3",
        dict(BASE, head_dim=32, tie_word_embeddings=False, rope_parameters=dict(rope_type="default", rope_theta=1e6)),
    ),
    "qwen3_tied_bias_window": (
        "qwen3",
        dict(
            BASE,
            head_dim=24,
            tie_word_embeddings=True,
            attention_bias=True,
            use_sliding_window=True,
            sliding_window=WINDOW,
            max_window_layers=1,
        ),
    ),
    "mistral": (
        "mistral",
        dict(
            BASE,
            sliding_window=WINDOW,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="default", rope_theta=1e6),
        ),
    ),
    "mistral_headdim_no_window": ("mistral", dict(BASE, head_dim=32, sliding_window=None, tie_word_embeddings=True)),
    "ministral": (
        "ministral",
        # head_dim explicit: transformers' MinistralAttention needs it (MinistralConfig leaves it None)
        dict(BASE, head_dim=32, sliding_window=WINDOW, layer_types=[SLIDING, FULL, SLIDING], tie_word_embeddings=False),
    ),
}
WINDOWED = ["qwen3_tied_bias_window", "mistral", "ministral"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """name -> (transformers model, its save_pretrained directory), built once per name."""
    return saved_models(tmp_path_factory, lambda name: make_torch_model(*CASES[name]))


def _load(d, dtype="float32"):
    loaded = models.load_model(str(d), dtype=dtype)
    return loaded, models.build_model(loaded.config, loaded.params, dtype=jnp.dtype(dtype))


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, OptimaError)
    return msg


# ------------------------------------------------------------------ parity with transformers
@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers_float32(ckpt, rand_ids, name):
    tm, d = ckpt(name)
    loaded, model = _load(d)
    cfg = loaded.config
    assert cfg.model_type == CASES[name][0]
    if cfg.model_type == "qwen3":
        assert cfg.qk_norm and cfg.head_dim != cfg.hidden_size // cfg.num_heads
        for k in ("q_norm", "k_norm"):  # the norms' weights are random, not ones: a misplaced norm would show
            w = loaded.params[f"model.layers.0.self_attn.{k}.weight"]
            assert w.shape == (cfg.head_dim,) and np.abs(w - 1).max() > 0.1
    assert ("lm_head.weight" in loaded.params) == (not tm.config.tie_word_embeddings)
    assert_logits_match_float32(model, tm, rand_ids)


@pytest.mark.parametrize("name", WINDOWED)
def test_window_shorter_than_sequence_is_exercised(ckpt, rand_ids, name):
    """The windowed cases depend on the window: the same weights without it are far from transformers."""
    tm, d = ckpt(name)
    loaded, _ = _load(d)
    cfg = loaded.config
    assert cfg.sliding_window == WINDOW < rand_ids.shape[1] and SLIDING in cfg.layer_types
    no_window = dataclasses.replace(cfg, layer_types=(FULL,) * cfg.num_layers)
    ours = np.asarray(models.forward(models.build_model(no_window, loaded.params), rand_ids))
    assert np.abs(ours - torch_logits(tm, rand_ids)).max() > 1e-2


@pytest.mark.parametrize("name", ["qwen3_untied", *WINDOWED])
def test_blockwise_attention_matches_transformers(ckpt, rand_ids, name):
    """The long-sequence attention path (forced: tiles of 8 over 24 tokens, windows of 8) gives the same float32
    logits as transformers for the new families."""
    from optima_jax.models import attention

    tm, d = ckpt(name)
    loaded = models.load_model(str(d))
    with attention.use("blockwise", block=8):
        assert_logits_match_float32(models.build_model(loaded.config, loaded.params), tm, rand_ids)


def _transformers_config(model_type: str, d: dict):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **d)


CONFIG_DEFAULT_CASES = [
    ("qwen3", dict(BASE)),  # no head_dim: transformers' Qwen3Config default (128), not hidden / heads
    ("qwen3", dict(BASE, use_sliding_window=True, max_window_layers=2)),  # default window 4096 from layer 2 on
    ("qwen3", dict(BASE, sliding_window=16)),  # a window without use_sliding_window is off
    # the pre-transformers-5 keys the hub's Qwen3 config.json files use
    ("qwen3", dict(BASE, rope_theta=1e6, rope_scaling=None, sliding_window=None, use_sliding_window=False)),
    (
        "mistral",
        {**{k: v for k, v in BASE.items() if k != "num_key_value_heads"}, "num_attention_heads": 16},
    ),  # 8 kv heads, window 4096
    ("mistral", dict(BASE, num_attention_heads=8, sliding_window=None, rope_theta=1e6, rms_norm_eps=1e-5)),
    ("ministral", dict(BASE, num_attention_heads=8)),  # every layer sliding by default
    ("ministral", dict(BASE, num_attention_heads=8, layer_types=[FULL, SLIDING, FULL])),
]


@pytest.mark.parametrize("model_type,d", CONFIG_DEFAULT_CASES)
def test_config_defaults_match_transformers(model_type, d):
    """Keys a config.json may leave out get transformers' own defaults for that model_type."""
    hf = _transformers_config(model_type, d)
    ours = models.config_from_hf({"model_type": model_type, **d})
    n = hf.num_hidden_layers
    heads = hf.num_attention_heads
    assert ours.head_dim == (getattr(hf, "head_dim", None) or hf.hidden_size // heads)
    assert ours.attn_scale == pytest.approx(ours.head_dim**-0.5)
    assert ours.num_kv_heads == hf.num_key_value_heads
    assert ours.rms_norm_eps == hf.rms_norm_eps
    assert ours.tie_word_embeddings == hf.tie_word_embeddings
    assert ours.rope_full.theta == hf.rope_parameters["rope_theta"]
    # which layers transformers' attention windows: Qwen 3 / Ministral per layer_types, Mistral every layer
    if model_type == "mistral":
        windowed = [hf.sliding_window is not None] * n
    else:
        windowed = [t == SLIDING and hf.sliding_window is not None for t in hf.layer_types]
    assert [ours.window_for(i) is not None for i in range(n)] == windowed
    assert all(ours.window_for(i) in (None, hf.sliding_window) for i in range(n))


@pytest.mark.parametrize(
    "model_type,needle",
    [
        ("qwen3_moe", "mixture-of-experts"),
        ("ministral3", "query scaling"),
        ("mixtral", "expert"),
        ("qwen3_next", "linear attention"),
        ("falcon", "supported: "),
    ],
)
def test_unsupported_variants_get_a_one_line_error(ckpt, tmp_path, model_type, needle):
    _, d = ckpt("qwen3_untied")
    dst = tmp_path / "m"
    shutil.copytree(d, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["model_type"] = model_type
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(models.UnsupportedModelError) as e:
        models.load_model(str(dst))
    msg = _one_line(e)
    assert f"unsupported model_type {model_type!r}" in msg and str(dst / "config.json") in msg and needle in msg


@pytest.mark.parametrize("name", ["qwen3_untied", "mistral"])
def test_captured_linear_inputs_match_torch_hooks(ckpt, rand_ids, name):
    """What the engine captures per linear (block API, jitted, capture=True) equals what torch forward hooks see on
    the nn.Linear modules, block by block; q_norm / k_norm are not linears."""
    from flax import nnx

    from tests.test_models_parity import _torch_linear_inputs

    tm, d = ckpt(name)
    loaded, model = _load(d)
    assert "self_attn.q_norm" not in api.linear_names(loaded.config)
    h = model.embed(jnp.asarray(rand_ids))
    positions = jnp.arange(rand_ids.shape[1])[None]
    for i in range(loaded.config.num_layers):
        h_next, inputs = api.block_fn(model, i)(nnx.state(model.layers[i]), h, positions, capture=True)
        ref = _torch_linear_inputs(tm, rand_ids, i)
        assert sorted(inputs) == sorted(ref)
        for lin, x in ref.items():
            np.testing.assert_allclose(np.asarray(inputs[lin]), x, atol=2e-5, rtol=1e-5, err_msg=f"{i} {lin}")
        h = h_next


# ------------------------------------------------------------------ loading paths
@pytest.mark.parametrize("name", ["qwen3_untied", "mistral"])
def test_hub_id_from_a_sharded_local_snapshot(ckpt, rand_ids, tmp_path, monkeypatch, name):
    """A hub id resolves through huggingface_hub (offline, from a cache laid out as the hub writes it) to a sharded
    safetensors snapshot, and loads to the same logits as transformers."""
    import huggingface_hub.constants as hub

    tm, _ = ckpt(name)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / f"models--tiny-org--{name}"
    snap = repo / "snapshots" / commit
    tm.save_pretrained(snap, max_shard_size="100KB")
    assert (snap / "model.safetensors.index.json").exists() and len(list(snap.glob("*.safetensors"))) > 1
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    loaded = models.load_model(f"tiny-org/{name}")
    assert Path(loaded.source).resolve() == snap.resolve()
    model = models.build_model(loaded.config, loaded.params)
    assert_logits_match_float32(model, tm, rand_ids)


# ------------------------------------------------------------------ GGUF
def _write_gguf(path: Path, arch: str, tm, vocab: dict, name: str = "", window: int | None = None) -> None:
    """The transformers model written as llama.cpp's convert_hf_to_gguf.py writes it (float32 tensors): llama-arch
    files permute q/k rows, Qwen 3 files carry attn_q_norm / attn_k_norm and attention.key_length."""
    c = tm.config
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in tm.state_dict().items()}
    heads, kv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    w = gguf.GGUFWriter(str(path), arch)
    if name:
        w.add_name(name)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(c.vocab_size)
    if window is not None:
        w.add_sliding_window(window)
    _add_vocab(w, vocab)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not c.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    for i in range(c.num_hidden_layers):
        for g, h in names.items():
            for kind in ("weight", "bias"):
                key = f"model.layers.{i}.{h}.{kind}"
                if key not in sd:
                    continue
                arr = sd[key]
                if arch == "llama" and g in ("attn_q", "attn_k"):
                    arr = _llamacpp_permute(arr, heads if g == "attn_q" else kv)
                w.add_tensor(f"blk.{i}.{g}.{kind}", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


GGUF_CASES = {
    # name: (model_type, arch, extra config, vocab kind, general.name, GGUF sliding window)
    "qwen3_untied": ("qwen3", "qwen3", dict(head_dim=32, tie_word_embeddings=False), "gpt2", "Qwen3 Tiny", None),
    "qwen3_tied_bias": (
        "qwen3",
        "qwen3",
        dict(head_dim=24, tie_word_embeddings=True, attention_bias=True),
        "gpt2",
        "Qwen3 Tiny",
        None,
    ),
    "mistral_no_window": ("mistral", "llama", dict(sliding_window=None), "llama", "Mistral 7B Tiny", None),
    "mistral_window": ("mistral", "llama", dict(sliding_window=WINDOW), "llama", "mistral", WINDOW),
}


@pytest.mark.parametrize("name", list(GGUF_CASES))
def test_gguf_round_trip_matches_transformers(tmp_path, monkeypatch, name):
    """A GGUF written from a transformers model loads (names, permutation, config keys) to its logits, and the
    HF export of the GGUF-loaded model reloads in transformers as the same family with the same logits."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("OPTIMA_JAX_CACHE", str(tmp_path / "cache"))  # the converted tokenizer's cache
    model_type, arch, extra, vocab_kind, general_name, window = GGUF_CASES[name]
    vocab = _tiny_vocab(vocab_kind)
    tm = make_torch_model(model_type, dict(BASE, vocab_size=len(vocab["tokens"]), **extra))
    path = tmp_path / f"{name}.gguf"
    _write_gguf(path, arch, tm, vocab, name=general_name, window=window)

    loaded = models.load_model(str(path))
    cfg = loaded.config
    assert cfg.model_type == model_type and cfg.sliding_window == window
    assert cfg.head_dim == tm.config.head_dim and cfg.tie_word_embeddings == tm.config.tie_word_embeddings
    assert loaded.tokenizer is not None and len(loaded.tokenizer("the thin hen").input_ids) > 1
    ref = {k: v.numpy() for k, v in tm.state_dict().items() if k in loaded.params}
    assert set(ref) == set(loaded.params)
    for k, v in ref.items():
        np.testing.assert_array_equal(loaded.params[k], v, err_msg=k)
    ids = np.random.default_rng(0).integers(0, len(vocab["tokens"]), size=(2, 24)).astype(np.int32)
    model = models.build_model(cfg, loaded.params)
    assert_logits_match_float32(model, tm, ids)

    out = tmp_path / "hf"
    models.save_hf(str(out), cfg, loaded.params, tokenizer=loaded.tokenizer)
    back = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32).eval()
    assert back.config.model_type == model_type
    np.testing.assert_allclose(torch_logits(back, ids), torch_logits(tm, ids), atol=1e-4, rtol=0)


def test_mistral_gguf_tensors_match_transformers_gguf_loader(tmp_path, monkeypatch):
    """transformers' own GGUF loader (which undoes llama.cpp's q/k permutation itself) reads the same tensors and
    config from a Mistral file. It reads it as ``llama``: transformers renames only a file whose general.name is
    exactly "mistral", and that path fails with the installed gguf ("Unknown gguf model_type: mistral in gguf-py")."""
    from transformers import AutoConfig, AutoModelForCausalLM

    monkeypatch.setenv("OPTIMA_JAX_CACHE", str(tmp_path / "cache"))
    vocab = _tiny_vocab("llama")
    tm = make_torch_model("mistral", dict(BASE, vocab_size=len(vocab["tokens"]), sliding_window=None))
    path = tmp_path / "m.gguf"
    _write_gguf(path, "llama", tm, vocab, name="Mistral 7B Tiny")
    loaded = models.load_model(str(path))
    assert loaded.config.model_type == "mistral"
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)
    ref = hf.state_dict()
    assert set(ref) == set(loaded.params)
    for k, v in ref.items():
        np.testing.assert_array_equal(loaded.params[k], v.numpy(), err_msg=k)
    hc = AutoConfig.from_pretrained(str(tmp_path), gguf_file=path.name)
    for key in ("num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "vocab_size"):
        assert loaded.config.hf_config[key] == getattr(hc, key), key


def test_qwen3_moe_gguf_is_refused(tmp_path):
    write_stub_gguf(tmp_path / "moe.gguf", "qwen3moe")
    with pytest.raises(OptimaError) as e:
        models.load_model(str(tmp_path / "moe.gguf"))
    assert "unsupported GGUF architecture 'qwen3moe'" in _one_line(e)


# ------------------------------------------------------------------ HF export
@pytest.mark.parametrize("name", ["qwen3_tied_bias_window", "mistral", "ministral"])
def test_save_hf_round_trip_through_transformers(ckpt, rand_ids, tmp_path, name):
    """Change a weight through the block API, export (sharded), reload with transformers: same logits; our loader
    reads the export back to the same config."""
    from transformers import AutoModelForCausalLM

    _, d = ckpt(name)
    loaded, model = _load(d)
    W = np.asarray(api.get_linear(model, 1, "mlp.up_proj"))
    api.set_linear(model, 1, "mlp.up_proj", np.where(np.abs(W) > 0.05, W, 0.0))
    out = tmp_path / "export"
    models.save_hf(str(out), loaded.config, models.to_params_dict(model), max_shard_bytes=200_000)
    assert (out / "model.safetensors.index.json").exists()
    tm = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32).eval()
    assert tm.config.model_type == loaded.config.model_type
    np.testing.assert_allclose(torch_logits(tm, rand_ids), np.asarray(models.forward(model, rand_ids)), atol=1e-4)
    assert models.load_model(str(out)).config == loaded.config


# ------------------------------------------------------------------ the engine: a tiny prune, checkpoint, export
@pytest.mark.parametrize("family,scope", [("qwen3", "all"), ("mistral", "mlp")])
def test_tiny_prune_prunes_the_right_tensors(tmp_path, family, scope):
    """Wanda + OPTIMA at 50% on a tiny checkpoint (calibration windows longer than Mistral's window): the pruned
    tensors are exactly the scope's linears (all seven, or gate/up/down for prune_scope=mlp), never q_norm /
    k_norm or other tensors; the Orbax checkpoint restores, and its HF export reloads in transformers with the
    same logits."""
    import transformers
    from safetensors.numpy import load_file

    from optima_jax import checkpoint
    from optima_jax.prune import main

    src = tiny.make_checkpoint(tmp_path / family, family)
    out = tmp_path / "run"
    argv = ["optima-prune", *tiny.run_args(src, out, f"--config.prune_scope={scope}", nsamples=8)]
    argv += ["--config.export_hf=True"]
    assert main(argv) == 0

    dense = load_file(str(src / "model.safetensors"))
    config, pruned, _ = checkpoint.restore_pruned(out)
    assert config.model_type == family
    masks = checkpoint.restore_masks(out)
    names = api.linear_names(config)
    assert api.mlp_linears(config) == {"mlp.gate_proj": "out", "mlp.up_proj": "out", "mlp.down_proj": "in"}
    in_scope = names if scope == "all" else [n for n in names if n.startswith("mlp.")]
    expected = {api.weight_name(config, i, n) for i in range(config.num_layers) for n in in_scope}
    assert set(masks) == expected
    if family == "qwen3":
        assert any(".self_attn.q_norm." in k for k in dense) and any(".self_attn.k_norm." in k for k in dense)
    assert set(pruned) == set(dense)
    for name, w in dense.items():
        got = np.asarray(pruned[name])
        if name in masks:
            keep = masks[name]
            assert not np.any(got[~keep]) and np.all((~keep).sum(axis=1) == w.shape[1] // 2), name
        else:
            np.testing.assert_array_equal(got, w, err_msg=f"{name} changed but is not in the scope")
    rows = json.loads((out / "report.json").read_text())["linears"]
    assert len(rows) == len(expected) and all(r["err_update"] < r["err_selector"] for r in rows)

    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(out / "hf"), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = np.random.default_rng(0).integers(4, tiny.VOCAB, size=(2, 40)).astype(np.int32)
    ours = models.forward(models.build_model(config, pruned), ids)
    np.testing.assert_allclose(np.asarray(ours), torch_logits(hf, ids), atol=1e-4, rtol=0)
