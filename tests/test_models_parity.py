"""Parity of the Flax ports with transformers' PyTorch models (float32 eager attention), and the block API."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from optima_jax import models  # noqa: E402
from optima_jax.models import api  # noqa: E402
from tests.conftest import (
    TINY_CONFIGS,
    assert_bf16_close_to_float32,
    assert_logits_match_float32,  # noqa: E402
    torch_linear_inputs,
    torch_logits,
)

FAMILIES = list(TINY_CONFIGS)


def _load(tiny_dirs, name, dtype="float32"):
    tm, d = tiny_dirs(name)
    loaded = models.load_model(d, dtype=dtype)
    return tm, loaded, models.build_model(loaded.config, loaded.params, dtype=jnp.dtype(dtype))


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_transformers_float32(tiny_dirs, rand_ids, name):
    tm, _, model = _load(tiny_dirs, name)
    assert_logits_match_float32(model, tm, rand_ids)


@pytest.mark.parametrize("name", ["llama_untied_llama3", "gemma3_text"])
def test_logits_bfloat16_close_to_float32_reference(tiny_dirs, rand_ids, name):
    tm, loaded, model = _load(tiny_dirs, name, dtype="bfloat16")
    assert loaded.params["model.norm.weight"].dtype.name == "bfloat16"
    assert_bf16_close_to_float32(model, tm, rand_ids)


def _torch_linear_inputs(tm, ids, layer):
    return torch_linear_inputs(tm.model.layers[layer], lambda: torch_logits(tm, ids), api.linear_names(None))


@pytest.mark.parametrize("name", FAMILIES)
def test_capture_matches_torch_hooks_and_blockwise_equals_full(tiny_dirs, rand_ids, name):
    """embed -> every block (jitted block_fn, capture=True) -> final_logits: captured inputs equal what torch
    forward hooks see on the nn.Linear modules, and the result equals model(ids)."""
    from flax import nnx

    tm, loaded, model = _load(tiny_dirs, name)
    cfg = loaded.config
    h = model.embed(jnp.asarray(rand_ids))
    positions = jnp.arange(rand_ids.shape[1])[None]
    for i in range(cfg.num_layers):
        fn = jax.jit(api.block_fn(model, i), static_argnames="capture")
        h_next, inputs = fn(nnx.state(model.layers[i]), h, positions, capture=True)
        ref = _torch_linear_inputs(tm, rand_ids, i)
        assert sorted(inputs) == sorted(api.linear_names(cfg))  # jit returns dicts key-sorted
        for lin in api.linear_names(cfg):
            np.testing.assert_allclose(np.asarray(inputs[lin]), ref[lin], atol=2e-5, rtol=1e-5, err_msg=lin)
        h = h_next
    np.testing.assert_allclose(
        np.asarray(model.final_logits(h)), np.asarray(models.forward(model, rand_ids)), atol=1e-5, rtol=0
    )


def test_layer_call_capture_contract(tiny_dirs, rand_ids):
    """model.layers[i](h, positions, capture=True) eagerly: q/k/v share one input object, gate/up share one;
    without capture it returns the same h_out."""
    _, loaded, model = _load(tiny_dirs, "llama_tied_headdim")
    h = model.embed(jnp.asarray(rand_ids))
    positions = jnp.arange(rand_ids.shape[1])[None]
    h_next, inputs = model.layers[0](h, positions, capture=True)
    assert list(inputs) == api.linear_names(loaded.config)  # execution order
    assert inputs["self_attn.q_proj"] is inputs["self_attn.k_proj"] is inputs["self_attn.v_proj"]
    assert inputs["mlp.gate_proj"] is inputs["mlp.up_proj"]
    assert inputs["self_attn.o_proj"].shape == (2, 24, loaded.config.num_heads * loaded.config.head_dim)
    assert inputs["mlp.down_proj"].shape == (2, 24, loaded.config.intermediate_size)
    np.testing.assert_array_equal(np.asarray(model.layers[0](h, positions)), np.asarray(h_next))


def test_block_fn_is_pure_and_jittable(tiny_dirs, rand_ids):
    """block_fn under jit equals the eager layer, for a sliding and a global Gemma 3 layer."""
    from flax import nnx

    _, loaded, model = _load(tiny_dirs, "gemma3_text")
    h = model.embed(jnp.asarray(rand_ids))
    positions = jnp.arange(rand_ids.shape[1])[None]
    for i in (0, 1):  # a sliding and a global layer
        fn = jax.jit(api.block_fn(model, i), static_argnames="capture")
        state = nnx.state(model.layers[i])
        out, inputs = fn(state, h, positions, capture=True)
        ref_out, ref_inputs = model.layers[i](h, positions, capture=True)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), atol=1e-5)
        for k in ref_inputs:
            np.testing.assert_allclose(np.asarray(inputs[k]), np.asarray(ref_inputs[k]), atol=1e-5)
        out2 = fn(state, h, positions)  # capture=False returns only h
        np.testing.assert_allclose(np.asarray(out2), np.asarray(ref_out), atol=1e-5)


def test_set_linear_changes_output_like_torch(tiny_dirs, rand_ids):
    """Zeroing half of a weight through set_linear gives transformers' logits with the same change."""
    tm, loaded, model = _load(tiny_dirs, "qwen2")
    i, name = 2, "mlp.down_proj"
    W = np.asarray(api.get_linear(model, i, name))
    np.testing.assert_array_equal(W, loaded.params[f"model.layers.{i}.{name}.weight"])
    mask = np.random.default_rng(1).random(W.shape) < 0.5
    api.set_linear(model, i, name, W * mask)
    import copy

    tm2 = copy.deepcopy(tm)
    with torch.no_grad():
        tm2.model.layers[i].get_submodule(name).weight.mul_(torch.as_tensor(mask, dtype=torch.float32))
    np.testing.assert_allclose(
        np.asarray(models.forward(model, rand_ids)), torch_logits(tm2, rand_ids), atol=1e-4, rtol=0
    )
    with pytest.raises(models.ParamsError, match="model.layers.2.mlp.down_proj"):
        api.set_linear(model, i, name, W.T)
    with pytest.raises(models.ParamsError, match="unknown linear"):
        api.get_linear(model, 0, "mlp.nope")


def test_to_params_dict_inverts_build_and_block_params(tiny_dirs):
    _, loaded, model = _load(tiny_dirs, "gemma2")
    back = models.to_params_dict(model)
    assert set(back) == set(loaded.params)
    for k, v in loaded.params.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    bp = api.block_params(loaded.params, loaded.config, 1)
    for lin in api.linear_names(loaded.config):
        assert bp[lin] is loaded.params[f"model.layers.1.{lin}.weight"]
    assert "pre_feedforward_layernorm.weight" in bp and "self_attn.q_proj.weight" not in bp
    groups = api.input_groups(loaded.config)
    assert sorted(sum(groups.values(), [])) == sorted(api.linear_names(loaded.config))


def _old_format(d: dict, model_type: str) -> dict:
    """Rewrite a transformers-5 config dict into the pre-5 format (rope_theta / rope_scaling / rope_local_base_freq,
    sliding_window_pattern) that checkpoints on the hub use."""
    d = dict(d)
    rp = d.pop("rope_parameters")
    if model_type == "gemma3_text":
        full, sl = rp["full_attention"], rp["sliding_attention"]
        d["rope_theta"] = full["rope_theta"]
        d["rope_local_base_freq"] = sl["rope_theta"]
        d["rope_scaling"] = {k: v for k, v in full.items() if k != "rope_theta"}
    else:
        d["rope_theta"] = rp["rope_theta"]
        scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
        d["rope_scaling"] = None if scaling.get("rope_type") == "default" else scaling
    return d


@pytest.mark.parametrize("name", ["llama_untied_llama3", "gemma3_text"])
def test_old_format_config_matches_transformers(tiny_dirs, rand_ids, tmp_path, name):
    from transformers import AutoModelForCausalLM

    _, d = tiny_dirs(name)
    mt = TINY_CONFIGS[name][0]
    shutil.copytree(d, tmp_path / "m")
    with open(tmp_path / "m" / "config.json") as f:
        hf = json.load(f)
    with open(tmp_path / "m" / "config.json", "w") as f:
        json.dump(_old_format(hf, mt), f)
    tm = AutoModelForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="eager", dtype=torch.float32).eval()
    loaded = models.load_model(str(tmp_path / "m"))
    model = models.build_model(loaded.config, loaded.params)
    np.testing.assert_allclose(
        np.asarray(models.forward(model, rand_ids)), torch_logits(tm, rand_ids), atol=1e-4, rtol=0
    )


def test_gemma3_multimodal_checkpoint_loads_text_model(tiny_dirs, rand_ids, tmp_path):
    """A ``gemma3`` config wrapping ``text_config`` with ``language_model.model.*`` names (and a vision tower)
    loads as the text model."""
    from safetensors.numpy import load_file, save_file

    tm, d = tiny_dirs("gemma3_text")
    with open(os.path.join(d, "config.json")) as f:
        text = json.load(f)
    mm = {
        "model_type": "gemma3",
        "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": text,
        "vision_config": {"model_type": "siglip_vision_model"},
    }
    out = tmp_path / "mm"
    out.mkdir()
    with open(out / "config.json", "w") as f:
        json.dump(mm, f)
    tensors = {"language_model." + k: v for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    tensors["vision_tower.vision_model.post_layernorm.weight"] = np.ones(8, np.float32)
    save_file(tensors, str(out / "model.safetensors"))
    loaded = models.load_model(str(out))
    assert loaded.config.model_type == "gemma3_text" and loaded.config.hf_config["model_type"] == "gemma3"
    model = models.build_model(loaded.config, loaded.params)
    np.testing.assert_allclose(
        np.asarray(models.forward(model, rand_ids)), torch_logits(tm, rand_ids), atol=1e-4, rtol=0
    )
