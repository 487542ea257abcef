"""OPT port vs transformers' OPTForCausalLM (float32 eager attention, tiny random checkpoints), the block API on
OPT, the HF export, and a tiny OPT checkpoint pruned end to end through ``python -m optima_jax.prune``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from optima_jax import models  # noqa: E402
from optima_jax.models import api  # noqa: E402
from optima_jax.models.opt import positions_from_mask  # noqa: E402
from tests.conftest import (  # noqa: E402
    assert_bf16_close_to_float32,
    assert_logits_match_float32,
    saved_models,
    torch_linear_inputs,
    torch_logits,
)

REPO = Path(__file__).resolve().parents[1]

OPT_BASE = dict(
    vocab_size=256,
    hidden_size=64,
    ffn_dim=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    pad_token_id=1,
    bos_token_id=2,
    eos_token_id=2,
)
OPT_VARIANTS = {
    # OPT-125m..66b layout: pre-LayerNorm, ReLU, biases everywhere, tied LM head
    "pre": dict(OPT_BASE),
    # OPT-350m layout: post-LayerNorm, word_embed_proj_dim != hidden_size (project_in / project_out)
    "post_proj": dict(OPT_BASE, do_layer_norm_before=False, word_embed_proj_dim=32),
    # config switches: no biases, no LayerNorm affine params, GELU, untied LM head
    "nobias_untied": dict(
        OPT_BASE,
        enable_bias=False,
        layer_norm_elementwise_affine=False,
        activation_function="gelu",
        tie_word_embeddings=False,
    ),
}


def make_opt(kwargs: dict, seed: int = 0):
    """Random transformers OPTForCausalLM in float32 with eager attention; every parameter randomised."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("opt", **kwargs)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(
                    torch.randn_like(p) * (0.3 if name.endswith("weight") else 0.1)
                    + (1.0 if name.endswith("weight") else 0.0)
                )
            else:
                p.copy_(torch.randn_like(p) * 0.08)
    return model


@pytest.fixture(scope="module")
def opt_dirs(tmp_path_factory):
    """variant -> (torch model, HF dir written by save_pretrained), built lazily."""
    return saved_models(tmp_path_factory, lambda name: make_opt(OPT_VARIANTS[name]), prefix="opt_")


def _load(opt_dirs, name, dtype="float32"):
    tm, d = opt_dirs(name)
    loaded = models.load_model(d, dtype=dtype)
    return tm, loaded, models.build_model(loaded.config, loaded.params, dtype=jnp.dtype(dtype))


@pytest.mark.parametrize("name", list(OPT_VARIANTS))
def test_logits_match_transformers_float32(opt_dirs, rand_ids, name):
    tm, loaded, model = _load(opt_dirs, name)
    assert loaded.config.model_type == "opt" and models.registry.family_of(loaded.config).name == "opt"
    assert_logits_match_float32(model, tm, rand_ids)


@pytest.mark.parametrize("name", ["pre", "post_proj"])
def test_logits_bfloat16_close_to_float32_reference(opt_dirs, rand_ids, name):
    tm, loaded, model = _load(opt_dirs, name, dtype="bfloat16")
    assert loaded.params["model.decoder.embed_tokens.weight"].dtype.name == "bfloat16"
    assert_bf16_close_to_float32(model, tm, rand_ids)


def _torch_linear_inputs(tm, ids, layer, names):
    return torch_linear_inputs(tm.model.decoder.layers[layer], lambda: torch_logits(tm, ids), names)


@pytest.mark.parametrize("name", list(OPT_VARIANTS))
def test_capture_matches_torch_hooks_and_blockwise_equals_full(opt_dirs, rand_ids, name):
    """embed -> every block (jitted block_fn, capture=True) -> final_logits: captured inputs equal what torch
    forward hooks see on each nn.Linear (fc1/fc2 see [B*T, in] in torch), and the result equals model(ids)."""
    from flax import nnx

    tm, loaded, model = _load(opt_dirs, name)
    cfg = loaded.config
    names = api.linear_names(cfg)
    h = model.embed(jnp.asarray(rand_ids))
    positions = jnp.arange(rand_ids.shape[1])[None]
    for i in range(cfg.num_layers):
        fn = api.block_fn(model, i)
        h_next, inputs = fn(nnx.state(model.layers[i]), h, positions, capture=True)
        ref = _torch_linear_inputs(tm, rand_ids, i, names)
        assert sorted(inputs) == sorted(names)
        for lin in names:
            got = np.asarray(inputs[lin])
            np.testing.assert_allclose(got.reshape(ref[lin].shape), ref[lin], atol=2e-5, rtol=1e-5, err_msg=lin)
            assert got.shape[:2] == rand_ids.shape
        h = h_next
    np.testing.assert_allclose(
        np.asarray(model.final_logits(h)), np.asarray(models.forward(model, rand_ids)), atol=1e-5, rtol=0
    )


def test_layer_call_capture_contract(opt_dirs, rand_ids):
    """Eager ``model.layers[i](h, positions, capture=True)``: execution order, q/k/v share one input object,
    shapes; without capture the same h_out."""
    _, loaded, model = _load(opt_dirs, "pre")
    cfg = loaded.config
    h = model.embed(jnp.asarray(rand_ids))
    positions = jnp.arange(rand_ids.shape[1])[None]
    h_next, inputs = model.layers[1](h, positions, capture=True)
    assert list(inputs) == api.linear_names(cfg)
    assert inputs["self_attn.q_proj"] is inputs["self_attn.k_proj"] is inputs["self_attn.v_proj"]
    assert inputs["self_attn.out_proj"].shape == (2, 24, cfg.hidden_size)
    assert inputs["fc2"].shape == (2, 24, cfg.intermediate_size)
    np.testing.assert_array_equal(np.asarray(model.layers[1](h, positions)), np.asarray(h_next))


def test_block_api_names_groups_and_set_linear(opt_dirs, rand_ids):
    """linear names / input groups / HF weight names match the torch module tree and checkpoint; zeroing half of
    fc1 through set_linear gives transformers' logits with the same change."""
    import copy

    from safetensors.numpy import load_file

    from optima_jax.sparsity import select_linears

    tm, loaded, model = _load(opt_dirs, "pre")
    cfg = loaded.config
    names = api.linear_names(cfg)
    assert names == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"]
    torch_linears = {n for n, m in tm.model.decoder.layers[0].named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(names) == torch_linears
    groups = api.input_groups(cfg)
    assert groups == {"attn_in": names[:3], "attn_out": ["self_attn.out_proj"], "mlp_in": ["fc1"], "mlp_out": ["fc2"]}
    assert api.mlp_linears(cfg) == {"fc1": "out", "fc2": "in"}
    assert select_linears(names, "mlp", api.mlp_linears(cfg)) == ["fc1", "fc2"]
    on_disk = load_file(os.path.join(opt_dirs("pre")[1], "model.safetensors"))
    for i in range(cfg.num_layers):
        bp = api.block_params(loaded.params, cfg, i)
        for n in names:
            key = api.weight_name(cfg, i, n)
            assert key == f"model.decoder.layers.{i}.{n}.weight" and key in on_disk
            np.testing.assert_array_equal(np.asarray(api.get_linear(model, i, n)), on_disk[key])
            assert bp[n] is loaded.params[key]
        assert {"fc1.bias", "self_attn_layer_norm.bias", "final_layer_norm.weight"} <= set(bp)
    back = models.to_params_dict(model)
    assert set(back) == set(loaded.params) == {k for k in on_disk if k != "lm_head.weight"}

    i, name = 1, "fc1"
    W = np.asarray(api.get_linear(model, i, name))
    mask = np.random.default_rng(1).random(W.shape) < 0.5
    api.set_linear(model, i, name, W * mask)
    tm2 = copy.deepcopy(tm)
    with torch.no_grad():
        tm2.model.decoder.layers[i].fc1.weight.mul_(torch.as_tensor(mask, dtype=torch.float32))
    np.testing.assert_allclose(
        np.asarray(models.forward(model, rand_ids)), torch_logits(tm2, rand_ids), atol=1e-4, rtol=0
    )
    with pytest.raises(models.ParamsError, match=r"model\.decoder\.layers\.1\.fc1\.weight"):
        api.set_linear(model, i, name, W.T)
    with pytest.raises(models.ParamsError, match="unknown linear 'mlp.up_proj'"):
        api.get_linear(model, 0, "mlp.up_proj")


def test_positions_from_attention_mask_match_transformers(opt_dirs):
    """Learned positions at ``cumsum(mask) * mask - 1`` (+2 offset) for a left-padded batch equal transformers'
    embed_positions; unpadded input uses arange(T) (+2), and the table index really is offset by 2."""
    tm, loaded, model = _load(opt_dirs, "post_proj")
    rng = np.random.default_rng(3)
    ids = rng.integers(3, 256, size=(3, 10)).astype(np.int32)
    mask = np.ones((3, 10), np.int64)
    mask[1, :4] = 0
    mask[2, :7] = 0
    dec = tm.model.decoder
    with torch.no_grad():
        tid = torch.as_tensor(ids, dtype=torch.long)
        ref = dec.project_in(dec.embed_tokens(tid)) + dec.embed_positions(torch.as_tensor(mask))
    pos = positions_from_mask(mask)
    np.testing.assert_array_equal(np.asarray(pos)[0], np.arange(10))
    np.testing.assert_allclose(np.asarray(model.embed(jnp.asarray(ids), pos)), ref.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(
        np.asarray(model.embed(jnp.asarray(ids[:1]))),
        np.asarray(model.embed(jnp.asarray(ids[:1]), jnp.arange(10)[None])),
    )
    table = loaded.params["model.decoder.embed_positions.weight"]
    assert table.shape == (64 + 2, 64)
    with torch.no_grad():
        tok = dec.project_in(dec.embed_tokens(tid[:1])).numpy()
    np.testing.assert_allclose(np.asarray(model.embed(jnp.asarray(ids[:1]))) - tok, table[None, 2:12], atol=1e-6)
    with pytest.raises(models.ModelConfigError, match="exceeds max_position_embeddings=64"):
        model.embed(jnp.zeros((1, 65), jnp.int32))


@pytest.mark.parametrize("name", ["pre", "post_proj", "nobias_untied"])
def test_save_hf_reloads_in_transformers(opt_dirs, rand_ids, tmp_path, name):
    """Pruned-looking params (half of every fc2 zeroed) exported with save_hf reload in OPTForCausalLM with our
    logits, and load back into an identical params dict."""
    from transformers import AutoModelForCausalLM

    _, loaded, model = _load(opt_dirs, name)
    cfg = loaded.config
    rng = np.random.default_rng(0)
    for i in range(cfg.num_layers):
        W = np.asarray(api.get_linear(model, i, "fc2"))
        api.set_linear(model, i, "fc2", W * (rng.random(W.shape) < 0.5))
    params = models.to_params_dict(model)
    out = tmp_path / "hf"
    models.save_hf(str(out), cfg, params)
    hf = AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager", dtype=torch.float32).eval()
    assert type(hf).__name__ == "OPTForCausalLM"
    np.testing.assert_allclose(
        np.asarray(models.forward(model, rand_ids)), torch_logits(hf, rand_ids), atol=1e-4, rtol=0
    )
    again = models.load_model(str(out))
    assert again.config == cfg
    for k, v in params.items():
        np.testing.assert_array_equal(again.params[k], v, err_msg=k)


def test_old_decoder_prefix_checkpoint_loads(opt_dirs, rand_ids, tmp_path):
    """Hub OPT checkpoints saved from OPTModel name tensors ``decoder.*``: they load as ``model.decoder.*``."""
    import shutil

    from safetensors.numpy import load_file, save_file

    tm, d = opt_dirs("pre")
    out = tmp_path / "old"
    out.mkdir()
    shutil.copy(os.path.join(d, "config.json"), out / "config.json")
    tensors = load_file(os.path.join(d, "model.safetensors"))
    save_file(
        {k[len("model.") :]: v for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"}
    )
    loaded = models.load_model(str(out))
    assert "model.decoder.layers.0.fc1.weight" in loaded.params
    model = models.build_model(loaded.config, loaded.params)
    np.testing.assert_allclose(
        np.asarray(models.forward(model, rand_ids)), torch_logits(tm, rand_ids), atol=1e-4, rtol=0
    )


def test_bad_opt_config_is_a_clear_error(tmp_path):
    from optima_jax.models.opt import config_from_hf

    good = dict(OPT_BASE, model_type="opt")
    with pytest.raises(models.ModelConfigError, match="hidden_size=66 is not a multiple"):
        config_from_hf(dict(good, hidden_size=66), where="x/config.json")
    with pytest.raises(models.ModelConfigError, match="required key 'ffn_dim'"):
        config_from_hf({k: v for k, v in good.items() if k != "ffn_dim"})
    with pytest.raises(models.ModelConfigError, match="unsupported activation 'swish'"):
        config_from_hf(dict(good, activation_function="swish"))


# ------------------------------------------------------------------------------------- end to end through the CLI
@pytest.fixture(scope="module")
def opt_run(tmp_path_factory):
    """A tiny OPT checkpoint (with a BPE tokenizer) pruned to 50% unstructured by the CLI, exported to HF."""
    import tiny

    root = tmp_path_factory.mktemp("opt_e2e")
    ckpt = root / "ckpt"
    tm = make_opt(
        dict(
            OPT_BASE,
            vocab_size=tiny.VOCAB,
            num_hidden_layers=2,
            max_position_embeddings=128,
            pad_token_id=3,
            bos_token_id=1,
            eos_token_id=2,
        )
    )
    tm.save_pretrained(str(ckpt), safe_serialization=True)
    tiny.save_tokenizer(ckpt)
    out = root / "run"
    args = [
        sys.executable,
        "-m",
        "optima_jax.prune",
        "--config",
        "configs/base.py",
        f"--config.model={ckpt}",
        f"--config.output_dir={out}",
        f"--config.calibration.source={tiny.shared_text('wiki_train.txt')}",
        "--config.calibration.nsamples=8",
        "--config.calibration.seqlen=32",
        "--config.calibration.micro_batch=4",
        "--config.export_hf=True",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TQDM_DISABLE="1")
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    return ckpt, out


@pytest.mark.slow
def test_prune_cli_end_to_end(opt_run):
    """Every OPT block linear is exactly 50% zero per row (Wanda rows, OPTIMA update keeps pruned entries at 0),
    nothing else changed, and the HF export reloads in transformers with our logits."""
    import transformers
    from safetensors.numpy import load_file

    import tiny
    from optima_jax import checkpoint

    ckpt, out = opt_run
    dense = load_file(str(ckpt / "model.safetensors"))
    pruned = checkpoint.flatten(checkpoint.restore_params(out))
    cfg = models.load_model(str(ckpt)).config
    linears = {api.weight_name(cfg, i, n) for i in range(cfg.num_layers) for n in api.linear_names(cfg)}
    assert set(pruned) == set(dense)
    for name, w in dense.items():
        got = np.asarray(pruned[name])
        if name in linears:
            zeros = (got == 0).sum(axis=1)
            assert np.all(zeros == w.shape[1] // 2), (name, zeros.min(), zeros.max())
            assert not np.array_equal(got[got != 0], w[got != 0]), f"{name}: kept weights were not updated"
        else:
            np.testing.assert_array_equal(got, w, err_msg=f"{name} changed but is not a pruned linear")

    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(out / "hf"), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = np.random.default_rng(0).integers(4, tiny.VOCAB, size=(2, 24)).astype(np.int32)
    ours = models.build_model(cfg, pruned, dtype=jnp.float32)(jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(ours), torch_logits(hf, ids), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_prune_cli_masks_and_report_use_opt_hf_names(opt_run):
    """The saved keep-masks and the report rows name the true HF tensors (model.decoder.layers.{i}.*)."""
    from optima_jax import checkpoint

    ckpt, out = opt_run
    cfg = models.load_model(str(ckpt)).config
    linears = {api.weight_name(cfg, i, n) for i in range(cfg.num_layers) for n in api.linear_names(cfg)}
    masks = checkpoint.restore_masks(out)
    rows = json.loads((out / "report.json").read_text())["linears"]
    assert {r["layer"] for r in rows} == linears
    assert set(masks) == linears
    pruned = checkpoint.flatten(checkpoint.restore_params(out))
    for name in linears:
        assert not np.any(np.asarray(pruned[name])[~masks[name]]), name


def test_shard_params_splits_opt_mlp_on_8_devices(opt_dirs, tmp_path):
    """mesh.shard_params on OPT: fc1 (weight and bias) split along out_features and fc2 along in_features over
    8 CPU devices, attention replicated; the sequential engine then gives the same Hessians in every block (so
    the same hidden states between blocks) as unsharded, to float32 rounding."""
    import subprocess
    import sys
    import textwrap

    _, d = opt_dirs("pre")
    script = textwrap.dedent(f"""
        import sys, numpy as np, jax, jax.numpy as jnp
        from flax import nnx
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        import test_engine
        from optima_jax import models
        from optima_jax.models import api
        from optima_jax.engine import run_sequential
        from optima_jax.sharding import make_meshes, shard_block_state
        assert jax.device_count() == 8
        loaded = models.load_model({d!r})
        mesh = make_meshes(data=8)[0]
        st = shard_block_state(nnx.state(models.build_model(loaded.config, loaded.params).layers[0]), mesh,
                               api.mlp_linears(loaded.config))
        spec = lambda *k: tuple(__import__("functools").reduce(lambda a, b: a[b], k, st)[...].sharding.spec)
        print(spec("fc1", "weight"), spec("fc1", "bias"), spec("fc2", "weight"), spec("self_attn", "q_proj", "weight"))
        ids = test_engine._ids(16, 12, 256)
        out = {{}}
        for tag, shard in (("rep", False), ("shard", True)):
            model = models.build_model(loaded.config, loaded.params, dtype=jnp.float32)
            rec = {{}}
            run_sequential(model, loaded.config, ids, test_engine._identity_pruner(rec), micro_batch=8, mesh=mesh,
                           shard_params=shard, on_block_done=lambda b: None, progress=False)
            out.update({{f"{{tag}}/{{b}}:{{nm}}": v for (b, nm), v in rec.items()}})
        np.savez(sys.argv[1], **out)
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    path = tmp_path / "H.npz"
    r = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "('data', None) ('data',) (None, 'data') ()"
    got = dict(np.load(path))
    keys = [k.split("/", 1)[1] for k in got if k.startswith("rep/")]
    assert len(keys) == 2 * 6
    for k in keys:
        np.testing.assert_allclose(got[f"shard/{k}"], got[f"rep/{k}"], rtol=2e-5, atol=1e-4, err_msg=k)
