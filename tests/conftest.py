"""Shared test fixtures. torch is a test-only dependency."""

from __future__ import annotations

import numpy as np
import pytest

# Tiny HF configs per family (transformers >= 5 config kwargs). sliding_window=8 with sequences of 24 tokens.
TINY_BASE = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)

TINY_CONFIGS = {
    "llama_untied_llama3": (
        "llama",
        dict(
            TINY_BASE,
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    "llama_tied_headdim": (
        "llama",
        dict(
            TINY_BASE,
            tie_word_embeddings=True,
            head_dim=32,
            rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
        ),
    ),
    "qwen2": (
        "qwen2",
        dict(
            TINY_BASE,
            tie_word_embeddings=False,
            use_sliding_window=True,
            sliding_window=8,
            max_window_layers=2,
            rope_parameters=dict(rope_type="default", rope_theta=1e6),
        ),
    ),
    "gemma2": (
        "gemma2",
        dict(
            TINY_BASE,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=8,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        ),
    ),
    "gemma3_text": (
        "gemma3_text",
        dict(
            TINY_BASE,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            rope_parameters={
                "full_attention": dict(rope_type="linear", factor=4.0, rope_theta=1e6),
                "sliding_attention": dict(rope_type="default", rope_theta=1e4),
            },
        ),
    ),
}


def make_torch_model(model_type: str, kwargs: dict, seed: int = 0):
    """A random transformers CausalLM in float32 with eager attention; every parameter randomised
    (norm weights too, so (1 + w) and w norms are exercised)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, **kwargs)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (0.0 if model_type.startswith("gemma") else 1.0))
            else:
                p.copy_(torch.randn_like(p) * 0.08)
    return model


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long)).logits.float().numpy()


def saved_models(tmp_path_factory, make, prefix: str = ""):
    """A lazy getter name -> (torch model, its save_pretrained directory with safetensors, as str): ``make(name)``
    builds the model, once per name."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            model = make(name)
            d = tmp_path_factory.mktemp(prefix + name)
            model.save_pretrained(d, safe_serialization=True)
            cache[name] = (model, str(d))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """name -> (torch model, local HF dir saved with safetensors) for every entry of TINY_CONFIGS (lazy)."""
    return saved_models(tmp_path_factory, lambda name: make_torch_model(*TINY_CONFIGS[name]))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random LLaMA checkpoint (tests/tiny.py) for end-to-end CLI runs."""
    import tiny

    return tiny.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama", "llama")


@pytest.fixture
def rand_ids():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(2, 24)).astype(np.int32)


def torch_linear_inputs(block, ids_run, names) -> dict:
    """{name: the input array [B, T, in] that submodule ``name`` of the torch ``block`` sees} while
    ``ids_run()`` runs the whole torch model (forward hooks, removed afterwards)."""
    seen = {}
    hooks = [
        block.get_submodule(n).register_forward_hook(
            lambda m, inp, out, n=n: seen.__setitem__(n, inp[0].detach().numpy().copy())
        )
        for n in names
    ]
    try:
        ids_run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def assert_logits_match_float32(model, torch_model, ids, atol=1e-4):
    """Our float32 logits equal transformers' on the same ids (max abs diff <= atol)."""
    from optima_jax import models

    ours = np.asarray(models.forward(model, ids))
    ref = torch_logits(torch_model, ids)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=atol, rtol=0)


def assert_bf16_close_to_float32(model, torch_model, ids):
    """bf16 logits within 5% of the float32 reference's scale, and really computed in bf16 (not identical)."""
    from optima_jax import models

    ours = np.asarray(models.forward(model, ids))
    ref = torch_logits(torch_model, ids)
    scale = np.abs(ref).max()
    err = np.abs(ours - ref).max()
    assert err <= 0.05 * scale, (err, scale)
    assert err > 1e-5
