"""Causal softmax attention for every family: one entry point, :func:`attend`, and the paths it dispatches to.

Paths (all compute ``softmax(mask(cap(q·k * scale))) v`` with GQA, an optional sliding window and optional
logit soft-capping; they differ only by float rounding):

- ``naive``: scores ``[B, KV, G, T, T]`` materialised, masked, softmax in float32. Used when the sequence fits
  in one block (it is the same work then) and kept as the tests' reference.
- ``blockwise``: flash-style online softmax in pure JAX (any backend). A ``lax.scan`` over query blocks and a
  ``fori_loop`` over only the key blocks a query block can see (causal: up to the diagonal; sliding window:
  from the window's first block), so work and memory follow the visible part of the mask; masks are applied
  only on the blocks that cross the causal or window boundary. Peak memory is a few
  ``[B, KV, G, block_q, block_k]`` tiles instead of ``[B, KV, G, T, T]``.
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (fused flash attention) on a GPU for
  bf16/f16 inputs without soft-capping. cuDNN has no logit soft-capping and no float32 flash kernel, and has
  head-dim limits; any of these, or any shape cuDNN rejects while tracing, falls back to ``blockwise``.

Precision contract (as the naive path and transformers' eager attention): q·k in the compute dtype (times
``scale`` and soft-capped in that dtype), softmax statistics in float32, probabilities cast to the value dtype
for the product with v (accumulated in float32 by the blockwise path).

``attend`` dispatches ``auto``: cuDNN where it applies, else naive when ``T <= block_k``, else blockwise.
:func:`use` overrides the choice (tests and benchmarks), e.g. ``with attention.use("blockwise", block=8):``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import jax
import jax.numpy as jnp
from jax import lax

from optima_jax.models.config import ModelConfigError

log = logging.getLogger("optima_jax.models.attention")

IMPLEMENTATIONS = ("auto", "naive", "blockwise", "cudnn")
_NEG = float(jnp.finfo(jnp.float32).min)  # masked score (finite, so fully masked tiles stay NaN-free)
# Tile sizes per backend (query block, key block). CPU: measured on 2 cores (SmolLM2 and Gemma 3 270M
# attention at 2048 tokens, docs/engine.md); GPU/TPU: larger tiles keep the matmul units busy (not tuned here).
_BLOCKS = {"cpu": (128, 128)}
_BLOCKS_ACCELERATOR = (512, 512)


@dataclasses.dataclass(frozen=True)
class _Choice:
    impl: str = "auto"
    block_q: int | None = None
    block_k: int | None = None


_choice = _Choice()


@contextlib.contextmanager
def use(impl: str = "auto", block: int | None = None, block_q: int | None = None, block_k: int | None = None):
    """Force an attention path (and tile sizes) inside the ``with`` block.

    The choice is read while tracing, so jit caches are cleared on entry and exit (a function compiled with
    one path is never reused with another). For tests and benchmarks; the product uses ``auto``.
    """
    global _choice
    _check_impl(impl)
    for name, b in (("block", block), ("block_q", block_q), ("block_k", block_k)):
        if b is not None and (not isinstance(b, int) or b < 1):
            raise ModelConfigError(f"attention {name} must be a positive integer, got {b!r}")
    prev = _choice
    _choice = _Choice(impl, block_q or block, block_k or block)
    jax.clear_caches()
    try:
        yield
    finally:
        _choice = prev
        jax.clear_caches()


def _check_impl(impl: str) -> None:
    if impl not in IMPLEMENTATIONS:
        raise ModelConfigError(f"unknown attention implementation {impl!r} (known: {', '.join(IMPLEMENTATIONS)})")


def block_sizes(platform: str | None = None) -> tuple[int, int]:
    """(block_q, block_k) of the blockwise path on ``platform`` (default: JAX's default backend), unless
    :func:`use` set them."""
    bq, bk = _BLOCKS.get(platform or jax.default_backend(), _BLOCKS_ACCELERATOR)
    return _choice.block_q or bq, _choice.block_k or bk


def visible_mask(q_pos: jax.Array, k_pos: jax.Array, window: int | None) -> jax.Array:
    """bool [..., Tq, Tk]: query position q may attend key position k iff k <= q and (window is None or
    k > q - window)."""
    q = q_pos[:, None]
    k = k_pos[None, :]
    m = k <= q
    if window is not None:
        m = m & (k > q - window)
    return m


def _scores(q, k, spec: str, scale, softcap) -> jax.Array:
    """q·k in the compute dtype, times scale, soft-capped, then float32."""
    s = jnp.einsum(spec, q, k)
    if scale is not None:
        s = s * jnp.asarray(scale, s.dtype)
    if softcap is not None:
        s = jnp.tanh(s / softcap) * softcap
    return s.astype(jnp.float32)


def attend_naive(q, k, v, scale, softcap=None, window=None) -> jax.Array:
    """Materialised scores. q [B, T, H, hd], k/v [B, T, KV, hd] -> [B, T, H * hd]."""
    b, t, h, hd = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, hd)
    s = _scores(q, k, "btkgd,bskd->bkgts", scale, softcap)
    pos = jnp.arange(t)
    s = jnp.where(visible_mask(pos, pos, window), s, _NEG)
    probs = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h * hd)


def attend_blockwise(q, k, v, scale, softcap=None, window=None, block_q=None, block_k=None) -> jax.Array:
    """Online-softmax attention over (query block, visible key block) tiles; never holds [T, T] scores.

    q [B, T, H, hd], k/v [B, T, KV, hd] -> [B, T, H * hd]. T need not divide by the block sizes (padded keys
    lie past every real query, so the causal mask hides them; padded queries are dropped).
    """
    b, t, h, hd = q.shape
    kv = k.shape[2]
    g = h // kv
    dbq, dbk = block_sizes()
    bq, bk = min(block_q or dbq, t), min(block_k or dbk, t)
    if window is not None and window >= t:
        window = None
    nq, nk = -(-t // bq), -(-t // bk)

    def pad(x, n, blk):
        return jnp.pad(x, ((0, 0), (0, n * blk - t), (0, 0), (0, 0)))

    # [nq, B, KV, G, bq, hd] (scanned over), [nk, B, KV, bk, hd] (indexed)
    qb_all = pad(q, nq, bq).reshape(b, nq, bq, kv, g, hd).transpose(1, 0, 3, 4, 2, 5)
    kb_all = pad(k, nk, bk).reshape(b, nk, bk, kv, hd).transpose(1, 0, 3, 2, 4)
    vb_all = pad(v, nk, bk).reshape(b, nk, bk, kv, hd).transpose(1, 0, 3, 2, 4)

    def tile(j, carry, qb, q_pos, masked: bool):
        m, l, acc = carry
        kb = lax.dynamic_index_in_dim(kb_all, j, keepdims=False)
        vb = lax.dynamic_index_in_dim(vb_all, j, keepdims=False)
        s = _scores(qb, kb, "bkgqd,bksd->bkgqs", scale, softcap)
        if masked:
            mask = visible_mask(q_pos, j * bk + jnp.arange(bk), window)
            s = jnp.where(mask, s, _NEG)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.exp(s - m_new[..., None])
        if masked:  # a row with no visible key in this tile adds nothing (exp(_NEG - _NEG) would be 1)
            p = jnp.where(mask, p, 0.0)
        alpha = jnp.exp(m - m_new)
        pv = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(vb.dtype), vb, preferred_element_type=jnp.float32)
        return m_new, l * alpha + p.sum(-1), acc * alpha[..., None] + pv

    def query_block(_, xs):
        i, qb = xs
        q0 = i * bq
        q_last = q0 + bq - 1
        q_pos = q0 + jnp.arange(bq)
        hi = jnp.minimum(q_last // bk, nk - 1) + 1  # key blocks [lo, hi) are visible to some query
        clear_hi = (q0 + 1) // bk  # key blocks < clear_hi end at or before q0: no causal mask needed
        if window is None:
            lo = clear_lo = jnp.zeros((), clear_hi.dtype)
        else:
            lo = jnp.maximum(0, (q0 - window + 1) // bk)
            # key block j lies inside every query's window iff j * bk > q_last - window
            clear_lo = jnp.clip(-(-(q_last - window + 1) // bk), lo, jnp.maximum(clear_hi, lo))
        clear_hi = jnp.maximum(clear_hi, clear_lo)
        init = (
            jnp.full((b, kv, g, bq), _NEG, jnp.float32),
            jnp.zeros((b, kv, g, bq), jnp.float32),
            jnp.zeros((b, kv, g, bq, hd), jnp.float32),
        )
        c = lax.fori_loop(lo, clear_lo, lambda j, c: tile(j, c, qb, q_pos, True), init)
        c = lax.fori_loop(clear_lo, clear_hi, lambda j, c: tile(j, c, qb, q_pos, False), c)
        _, l, acc = lax.fori_loop(clear_hi, hi, lambda j, c: tile(j, c, qb, q_pos, True), c)
        return None, (acc / l[..., None]).astype(v.dtype)

    _, out = lax.scan(query_block, None, (jnp.arange(nq), qb_all))  # [nq, B, KV, G, bq, hd]
    return out.transpose(1, 0, 4, 2, 3, 5).reshape(b, nq * bq, h * hd)[:, :t]


def cudnn_unsupported(q, softcap) -> str | None:
    """Why the cuDNN path cannot compute this attention exactly (None if it can be tried)."""
    if softcap is not None:
        return "cuDNN has no logit soft-capping"
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return f"cuDNN flash attention needs bf16/f16 inputs, got {q.dtype}"
    if jax.default_backend() != "gpu":
        return f"backend is {jax.default_backend()}, not gpu"
    return None


def attend_cudnn(q, k, v, scale, window=None) -> jax.Array:
    """cuDNN fused flash attention (GPU, bf16/f16). Raises if cuDNN rejects the shapes."""
    b, t, h, hd = q.shape
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        scale=1.0 if scale is None else float(scale),
        is_causal=True,
        local_window_size=None if window is None or window >= t else (window - 1, 0),
        implementation="cudnn",
    )
    return out.reshape(b, t, h * hd)


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    scale: float | None,
    softcap: float | None = None,
    window: int | None = None,
) -> jax.Array:
    """Causal softmax attention. q [B, T, H, hd], k/v [B, T, KV, hd] -> [B, T, H * hd].

    ``scale=None``: q is already scaled (OPT). Query head ``kv_head * (H // KV) + g`` reads kv head ``kv_head``,
    as HF ``repeat_kv``. ``window``: a query at q attends keys k with ``q - window < k <= q``.
    """
    impl = _choice.impl
    if impl in ("auto", "cudnn"):
        why = cudnn_unsupported(q, softcap)
        if why is None:
            try:
                return attend_cudnn(q, k, v, scale, window)
            except (NotImplementedError, ValueError, RuntimeError) as e:  # cuDNN's trace-time shape checks
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
        log.debug("cuDNN attention not used (%s)", why)
        if impl == "cudnn":
            impl = "blockwise"
    if impl == "auto":
        impl = "naive" if q.shape[1] <= block_sizes()[1] else "blockwise"
    if impl == "naive":
        return attend_naive(q, k, v, scale, softcap, window)
    return attend_blockwise(q, k, v, scale, softcap, window)
