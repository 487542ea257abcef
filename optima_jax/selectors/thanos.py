"""Thanos (Ilin & Richtárik 2024, "Thanos: a block-wise pruning algorithm for efficient LLM
compression"): block-wise mask selection with a multi-weight OBS update.

For each block of ``blocksize`` columns [i1, i2) (left to right; earlier columns are frozen):

1. Mask: the Wanda metric |W_ij|·sqrt(diag(H)_j) on the *current* (already updated) weights.
   * unstructured, ``mask_scope="row"`` (default): in every row, among the not-yet-frozen columns
     [i1, in), rank the metric; the r_row smallest are "to be removed", where r_row = floor(in*ratio)
     minus what was already removed in that row; those that fall inside the block are removed now.
     This gives exactly floor(in*ratio) removed per row (the project-wide per-row convention).
   * unstructured, ``mask_scope="layer"``: the paper's global residual mask: the same ranking taken
     over the whole remaining sub-matrix W[:, i1:], r = floor(out*in*ratio) minus removed so far.
     Rows then lose different numbers of weights.
   * N:M: in each group of M columns of the block, the M-N smallest metrics are removed (true N:M
     masks; unlike the OPTIMA reference code, which routes 2:4 Thanos to a column-structured path).
2. Update: every row removes its set q (|q| may differ per row) at once and re-solves its remaining
   columns: δ = -w_q (Hr⁻¹[q,q])⁻¹ Hr⁻¹[q, :], with Hr = (H + damp I)[i1:, i1:]. Hr⁻¹ comes from the
   upper Cholesky factor U of (H + damp I)⁻¹: Hr⁻¹ = U[i1:, i1:]ᵀ U[i1:, i1:], so Hr⁻¹[block, :] =
   U[i1:i2, i1:i2]ᵀ U[i1:i2, i1:].

Choices: damping and dead inputs as SparseGPT (percdamp = 0.01 of mean(diag H); diag(H)==0 → H_ii=1,
W[:, i]=0); stable ties (lower index removed first); per-row solves batched with identity padding
(rows are processed in chunks of ``row_chunk`` to bound memory to row_chunk·B² floats).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from optima_jax.selectors.base import SelectionResult, check_block_args, check_inputs, register_selector
from optima_jax.selectors._hinv import check_factorized, mm, prepare
from optima_jax.transfers import put, to_device
from optima_jax.selectors.masks import ranks


def _block(W, U, sq, prune_all, i1, count, *, kind, k_row, k_layer, n, m, mask_scope, row_chunk):
    out, cols = W.shape
    colidx = jnp.arange(cols)
    in_block = (colidx >= i1) & (colidx < i1 + count)
    metric = jnp.abs(W) * jnp.sqrt(sq)[None, :]
    if kind == "nm":
        blk = lax.dynamic_slice(metric, (0, i1), (out, count)).reshape(out, count // m, m)
        pb = (ranks(blk) < (m - n)).reshape(out, count)
    else:
        # frozen columns get +inf so they never rank among the remaining ones
        rem = jnp.where((colidx >= i1)[None, :], metric, jnp.inf)
        if mask_scope == "row":
            r = k_row - jnp.sum(prune_all, axis=1)  # (out,)
            sel = ranks(rem) < r[:, None]
        else:
            r = k_layer - jnp.sum(prune_all)
            sel = (ranks(rem.reshape(-1)) < r).reshape(out, cols)
        sel = sel & in_block[None, :]
        pb = lax.dynamic_slice(sel, (0, i1), (out, count))
    Ub = lax.dynamic_slice(U, (i1, i1), (count, count))
    Urows = lax.dynamic_slice(U, (i1, 0), (count, cols))  # zero left of i1 (upper triangular)
    Hrows = mm(Ub.T, Urows)  # Hr^-1[block, :], (count, cols)
    Hbb = lax.dynamic_slice(Hrows, (0, i1), (count, count))
    Wb = lax.dynamic_slice(W, (0, i1), (out, count))
    eye = jnp.eye(count, dtype=W.dtype)

    def solve_row(args):
        p, wb = args
        pf = p.astype(W.dtype)
        R = Hbb * pf[:, None] * pf[None, :] + eye * (1 - pf)[None, :]
        return jnp.linalg.solve(R, pf * wb)

    # Rows padded to a multiple of the chunk (padding rows remove nothing: R = I, x = 0): lax.map's
    # own remainder path (a vmapped solve after the scan) hangs XLA on CPU (jax 0.10, out = 1100,
    # chunk 1024), e.g. SmolLM2's gate_proj (1536 rows).
    chunk = min(row_chunk, out)
    pad = (-out) % chunk
    X = lax.map(solve_row, (jnp.pad(pb, ((0, pad), (0, 0))), jnp.pad(Wb, ((0, pad), (0, 0)))), batch_size=chunk)[
        :out
    ]  # (out, count), zero off q
    W = W - mm(X, Hrows)
    prune_all = lax.dynamic_update_slice(prune_all, pb, (0, i1))
    W = jnp.where(prune_all, 0, W)
    return W, prune_all


@partial(jax.jit, static_argnames=("kind", "k_row", "k_layer", "n", "m", "blocksize", "mask_scope", "row_chunk"))
def _thanos_core(W, H, percdamp, *, kind, k_row, k_layer, n, m, blocksize, mask_scope, row_chunk):
    out, cols = W.shape
    sq = jnp.maximum(jnp.diagonal(H).astype(W.dtype), 0)
    W, U, dead = prepare(W, H, percdamp)
    prune_all = jnp.zeros(W.shape, bool)
    kw = dict(kind=kind, k_row=k_row, k_layer=k_layer, n=n, m=m, mask_scope=mask_scope, row_chunk=row_chunk)
    nfull = cols // blocksize
    if nfull > 0:

        def body(b, carry):
            return _block(carry[0], U, sq, carry[1], b * blocksize, blocksize, **kw)

        W, prune_all = lax.fori_loop(0, nfull, body, (W, prune_all))
    tail = cols - nfull * blocksize
    if tail:
        W, prune_all = _block(W, U, sq, prune_all, nfull * blocksize, tail, **kw)
    ok = jnp.all(jnp.isfinite(U)) & jnp.all(jnp.isfinite(W))
    return W, ~prune_all, ok


@register_selector("thanos")
def thanos(
    W,
    stats,
    spec,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    mask_scope: str = "row",
    row_chunk: int = 1024,
    where: str = "layer",
) -> SelectionResult:
    """W (out, in) float32, stats.H (in, in). Returns Thanos's mask and its block-wise updated weights."""
    W, spec = check_inputs(W, stats, spec, where)
    check_block_args("thanos", spec, blocksize, mask_scope, ("row", "layer"), where)
    out, cols = W.shape
    k_row = spec.expected_pruned_per_row(cols)
    k_layer = int(out * cols * spec.ratio) if spec.kind == "unstructured" else 0
    Wn, keep, ok = _thanos_core(
        W,
        to_device(stats.H),
        put(percdamp),
        kind=spec.kind,
        k_row=k_row,
        k_layer=k_layer,
        n=spec.n,
        m=spec.m,
        blocksize=int(blocksize),
        mask_scope=mask_scope,
        row_chunk=int(row_chunk),
    )
    check_factorized(ok, "thanos", percdamp, where)
    return SelectionResult(keep, Wn, {"selector": "thanos", "mask_scope": mask_scope})
