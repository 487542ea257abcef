"""Batched OPTIMA row solves with one Hessian shared by all rows of a linear layer.

For each output row j of W (out, in) with keep mask m_j (True = kept):

    minimize ½ Δᵀ (H + λI) Δ   subject to  Δ_i = −w_i where m_j[i] is False,

and the new row is w + Δ with pruned entries set to exactly 0. λ = damp · mean(diag H).

Methods
  * "exact" (default): batched masked preconditioned CG (`optima_jax.qp.pcg`) in Jacobi-scaled
    coordinates (Ĥ = S H S, unit diagonal), preconditioned by the masked shared inverse F ⊙ (Ĥ + ρI)⁻¹
    (ρ = `precond_rho`, default 1e-3; one Cholesky per layer), warm-started from W_init; each row stops on
    its own relative residual ‖r‖/‖b‖ ≤ rtol (or when it stagnates at the float32 floor, or at the
    iteration cap), then one refinement pass restarts CG from the true residual. One (B,n)·(n,n) matmul
    per iteration for the operator and one for the preconditioner.
  * "direct": per-row direct solve of the kept sub-system (H + λI)_II z = −(H Δ₀)_I, gathered into a
    (B, k, k) batch (k = largest number of free entries in a row, padded with identity), batched
    Cholesky, one step of iterative refinement. Rows are independent, so batching is exact.
  * "rapdhg": the paper's QP exactly as its code builds it (`optima_jax.qp.paper`): the mean covariance
    H / n_tokens, pruned entries boxed to [−w, −w + 1e-4], the dummy equality and inequality rows, a
    start at Δ = 0, and the solution added to the weights in bfloat16. Solved by our raPDHG
    (`optima_jax.qp.rapdhg`, MPAX's iterates) vmapped over rows with H shared, so each iteration does one
    matmul H @ Z over the batch; every row stops on its own MPAX-style termination test. Since that test
    is relative with an absolute floor, the scale of H decides how close to the optimum 1e-2 stops.
  * "rapdhg_sum": raPDHG on H as given (Σxᵀx, n_tokens times the paper's H), pruned entries fixed by
    l = u, no dummy rows, warm-started from W_init, float32 result: at 1e-2 a much tighter solve than
    the paper's. Both raPDHG forms run in segments: finished rows leave the batch and waiting rows take
    their slots, so the cost is the sum of the rows' iterations, not rows x the slowest row's.

Device residency: H, W, the masks and every work array stay device arrays from the caller to the result;
the host sees shapes, python scalars going in, and scalars or row-level flags coming out, explicitly
(`optima_jax.transfers`): the non-finite counts of H and W, the damp value, the direct method's largest free
count, and rAPDHG's done flags once per segment (one bool per batch slot). Everything else is jitted, so a
solve under `jax.transfer_guard("disallow")` raises only if something would copy an array implicitly.

Dead input channels (diag H == 0, e.g. an input that is always zero) carry no signal: their kept
weights are left unchanged (Δ_i = 0) and excluded from the solve. Singular H (fewer tokens than
inputs, collinear inputs): "exact" needs nothing special — H = XᵀX makes each row's system
consistent (the right-hand side lies in the range of H_FF), so CG converges to a minimiser (curvature
pᵀHp ≤ 0 stops the row); "direct": if a row's Cholesky fails, it is refactored with a jitter of
1e-6, 1e-5, 1e-4, 1e-3 · mean(diag H) added to the diagonal (the first that succeeds).
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optima_jax.config import default_config
from optima_jax.errors import OptimaError
from optima_jax.qp import paper as _paper
from optima_jax.qp import pcg as _pcg
from optima_jax.qp.problem import TerminationStatus
from optima_jax.qp import rapdhg as _pdhg
from optima_jax.qp.rapdhg import PdhgConfig
from optima_jax.transfers import fetch, put, to_device

_JITTERS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3)


class RowSolveResult(NamedTuple):
    """Result of `solve_rows` (arrays on the device).

    weight:     float32 (out, in), pruned entries exactly 0.
    converged:  bool (out,): exact: finite and relative residual ≤ rtol; direct: finite and backward
                error ≤ rtol; rapdhg, rapdhg_sum: status OPTIMAL.
    iterations: int32 (out,): exact: CG iterations (both passes); direct: 1 + refinement steps;
                rapdhg, rapdhg_sum: PDHG iterations.
    objective:  float32 (out,): ½ ΔᵀHΔ with the *undamped* H (Δ = weight − W).
    residual:   float32 (out,): exact: true relative residual ‖(Ĥy)_F‖/‖b‖ in scaled coordinates;
                direct: normwise backward error of the kept sub-system;
                rapdhg, rapdhg_sum: max(relative primal residual, relative dual residual, relative gap).
    damp_value: λ actually added to the diagonal (absolute units of the H passed in).
    """

    weight: jax.Array
    converged: jax.Array
    iterations: jax.Array
    objective: jax.Array
    residual: jax.Array
    damp_value: float


class AutoDampResult(NamedTuple):
    """Result of `auto_damp_solve`: the solve at the chosen damp, the damp grid and its validation errors."""

    result: RowSolveResult
    damp: float
    grid: tuple
    val_errors: tuple  # trace(ΔW H_val ΔWᵀ) per grid value (estimated on `rows_used` rows, scaled to all
    # rows); None where the scan stopped before that value
    val_error: float  # trace(ΔW H_val ΔWᵀ) of the returned weights (all rows)
    rows_used: int


def _tag(where: str) -> str:
    return f" ({where})" if where else ""


@jax.jit
def _nonfinite_counts(*arrays):
    return tuple(jnp.sum(~jnp.isfinite(a)).astype(jnp.int32) for a in arrays)


def _validate(H, W, keep_mask, where: str):
    """Shapes and dtypes from the arrays' metadata; finiteness counted on the device (two scalars back).
    Returns (H, W, keep_mask) as device arrays (float32, float32, bool)."""
    tag = _tag(where)
    if len(H.shape) != 2 or H.shape[0] != H.shape[1]:
        raise OptimaError(f"H must be square (in, in), got shape {tuple(H.shape)}{tag}")
    if len(W.shape) != 2 or W.shape[1] != H.shape[0]:
        raise OptimaError(f"W must be (out, in) with in = {H.shape[0]} to match H, got {tuple(W.shape)}{tag}")
    if tuple(keep_mask.shape) != tuple(W.shape):
        raise OptimaError(f"keep_mask shape {tuple(keep_mask.shape)} differs from W shape {tuple(W.shape)}{tag}")
    if np.dtype(keep_mask.dtype) != np.bool_:
        raise OptimaError(f"keep_mask must be boolean (True = kept), got dtype {keep_mask.dtype}{tag}")
    H, W, keep_mask = to_device(H, np.float32), to_device(W, np.float32), to_device(keep_mask)
    bad_h, bad_w = (int(c) for c in fetch(_nonfinite_counts(H, W)))
    if bad_h:
        raise OptimaError(f"H has {bad_h} non-finite entries{tag}")
    if bad_w:
        raise OptimaError(f"W has {bad_w} non-finite entries{tag}")
    return H, W, keep_mask


def _pairwise_mean(v):
    """Mean of a float32 vector by pairwise summation (error O(log n · eps), close to a float64 mean)."""
    n = v.shape[0]
    if n == 0:
        return jnp.zeros((), v.dtype)
    s = jnp.pad(v, (0, (1 << (n - 1).bit_length()) - n))
    while s.shape[0] > 1:
        half = s.shape[0] // 2
        s = s[:half] + s[half:]
    return s[0] / n


@jax.jit
def _damped_hessian(H, damp):
    """(Hn, Hd, dead, mean_diag, lam): symmetrised H, H + λI with λ = damp · mean(diag H) (mean 1 if ≤ 0),
    the dead channels (diag H ≤ 0)."""
    Hn = 0.5 * (H + H.T)
    diag = jnp.diagonal(Hn)
    mean_diag = _pairwise_mean(diag)
    mean_diag = jnp.where(mean_diag > 0, mean_diag, 1.0)
    lam = damp * mean_diag
    Hd = Hn + lam * jnp.eye(Hn.shape[0], dtype=Hn.dtype)
    return Hn, Hd, diag <= 0, mean_diag, lam


@partial(jax.jit, static_argnames=("all_kept_free",))
def _row_sets(W, mask, dead, *, all_kept_free):
    """free (kept entries that are variables) and fixed_delta (−w on the pruned entries)."""
    free = mask if all_kept_free else mask & ~dead[None, :]
    return free, jnp.where(mask, 0.0, -W).astype(jnp.float32)


def _pad_rows(a, pad, val):
    return jnp.concatenate([a, jnp.full((pad,) + a.shape[1:], val, a.dtype)]) if pad else a


@partial(jax.jit, static_argnames=("pad",))
def _exact_inputs(W, W_init, free, fixed_delta, s, *, pad):
    """Padded rows and the PCG start y0 = x0 / s (x0 = W_init − W on free entries, the fixed Δ elsewhere)."""
    Wp, fp, dp = _pad_rows(W, pad, 0.0), _pad_rows(free, pad, False), _pad_rows(fixed_delta, pad, 0.0)
    x0 = jnp.zeros_like(Wp) if W_init is None else _pad_rows(W_init - W, pad, 0.0)
    x0 = jnp.where(fp, x0, dp).astype(jnp.float32)
    return Wp, fp, dp, x0 / s[None, :]


@jax.jit
def _max_free(free):
    return jnp.max(jnp.sum(free, axis=1)) if free.shape[0] else jnp.zeros((), jnp.int32)


@partial(jax.jit, static_argnames=("k", "pad"))
def _direct_inputs(W, free, fixed_delta, *, k, pad):
    """Padded rows and, per row, the free indices first (in order) and which of the k slots are valid."""
    Wp, fp, dp = _pad_rows(W, pad, 0.0), _pad_rows(free, pad, False), _pad_rows(fixed_delta, pad, 0.0)
    order = jnp.argsort(~fp, axis=1, stable=True)[:, :k]
    valid = jnp.take_along_axis(fp, order, axis=1)
    return Wp, fp, dp, order.astype(jnp.int32), valid


@partial(jax.jit, static_argnames=("paper", "warm"))
def _pdhg_inputs(Hd, W, W_init, free, fixed_delta, scale, *, paper, warm):
    """rAPDHG's Q and start: the paper's Q = Hd · scale from Δ = 0; rapdhg_sum: Hd from W_init − W."""
    if paper:
        return Hd * scale, jnp.zeros_like(W)
    x0 = W_init - W if warm else jnp.zeros_like(W)
    return Hd, jnp.where(free, x0, fixed_delta).astype(jnp.float32)


@partial(jax.jit, static_argnames=("R", "paper", "exact_like"))
def _finish(W, mask, Hn, delta, res, its, ok, obj, rtol, *, R, paper, exact_like):
    """The first R rows: weight (pruned entries 0; the paper's bf16 write-back for rapdhg), converged,
    iterations, objective ½ΔᵀHΔ with the undamped H (computed here when obj is None), residual."""
    delta, res, its, ok = (t[:R] for t in (delta, res, its, ok))
    if paper:  # the paper's bf16 write-back; Δ as actually applied
        weight = _paper.cast_weights(W, delta, mask)
        delta = jnp.where(mask, weight - W, -W)
    else:
        weight = jnp.where(mask, W + delta, 0.0)
    if obj is None:
        obj = 0.5 * jnp.sum(jnp.matmul(delta, Hn, precision=_pcg.HI) * delta, axis=1)
    else:
        obj = obj[:R]
    converged = ok & (res <= rtol) if exact_like else ok
    return weight, converged, its, obj, res


# ---------------------------------------------------------------------------------------------
# per-batch kernels (pure; B rows at a time)


def _exact_batch(Hd, mean_diag, W, free, fixed_delta, idx, valid):
    """Direct solve for B rows. Hd (n,n) damped H; W, free, fixed_delta (B,n); idx, valid (B,k)."""
    del W
    B, k = idx.shape
    G = jnp.matmul(fixed_delta, Hd, precision=_pcg.HI)  # (B, n): (H Δ₀) per row
    rhs = -jnp.take_along_axis(G, idx, axis=1) * valid  # (B, k)
    vv = valid[:, :, None] & valid[:, None, :]
    Hg = jnp.where(vv, Hd[idx[:, :, None], idx[:, None, :]], 0.0)
    eye = jnp.eye(k, dtype=Hd.dtype)
    Hg = Hg + eye * jnp.where(valid, 0.0, 1.0)[:, None, :]  # identity on padding

    def factor(jit_):
        A = Hg + eye * (jit_ * mean_diag * valid)[:, None, :]
        return A, jnp.linalg.cholesky(A)

    A, L = factor(0.0)
    for j in _JITTERS[1:]:
        bad = ~jnp.all(jnp.isfinite(L), axis=(1, 2))
        A2, L2 = jax.lax.cond(jnp.any(bad), lambda: factor(j), lambda: (A, L))
        A = jnp.where(bad[:, None, None], A2, A)
        L = jnp.where(bad[:, None, None], L2, L)

    def solve(r):
        y = jax.scipy.linalg.solve_triangular(L, r[..., None], lower=True)
        return jax.scipy.linalg.solve_triangular(L, y, lower=True, trans="T")[..., 0]

    z = solve(rhs)
    r = rhs - jnp.einsum("bij,bj->bi", Hg, z, precision=_pcg.HI)
    z = z + solve(r)  # one step of iterative refinement
    r = rhs - jnp.einsum("bij,bj->bi", Hg, z, precision=_pcg.HI)
    nrm = lambda v: jnp.max(jnp.abs(v), axis=-1)
    hn = jnp.max(jnp.sum(jnp.abs(Hg), axis=-1), axis=-1)
    berr = nrm(r) / jnp.maximum(hn * nrm(z) + nrm(rhs), jnp.finfo(Hd.dtype).tiny)
    rows = jnp.arange(B)[:, None]
    delta = fixed_delta.at[rows, idx].add(jnp.where(valid, z, 0.0))
    ok = jnp.all(jnp.isfinite(z), axis=-1)
    return delta, berr, jnp.full((B,), 2, jnp.int32), ok


def _pcg_batch(Hs, s, Pinv, max_iter, rtol, W, free, fixed_delta, y0):
    """Masked PCG for B rows (see `optima_jax.qp.pcg`): scaled Hs, s, preconditioner Pinv (n,n) shared."""
    del W
    y, it1, _ = _pcg.pcg(Hs, y0, free, rtol=rtol, max_iter=max_iter, precond=Pinv)
    y, it2, _ = _pcg.pcg(Hs, y, free, rtol=rtol, max_iter=max_iter, precond=Pinv)  # refinement restart
    f = free.astype(y.dtype)
    b = -_pcg._mm(y * (1.0 - f), Hs) * f
    r = -_pcg._mm(y, Hs) * f
    nrm = lambda v: jnp.sqrt(jnp.sum(v * v, axis=1))
    bn, rn = nrm(b), nrm(r)
    res = jnp.where(bn > 0, rn / jnp.where(bn > 0, bn, 1.0), jnp.where(rn > 0, 1.0, 0.0))
    delta = jnp.where(free, y * s[None, :], fixed_delta)
    ok = jnp.all(jnp.isfinite(delta), axis=1)
    return delta, res, it1 + it2, ok


def _row_qp(Hd, free, fixed_delta):
    """One row's box-only QP (raPDHG's argument tuple): l = u = the fixed value on non-free entries."""
    n = Hd.shape[0]
    lo = jnp.where(free, -jnp.inf, fixed_delta)
    hi = jnp.where(free, jnp.inf, fixed_delta)
    return (
        Hd,
        jnp.zeros((n,), Hd.dtype),
        jnp.zeros((0, n), Hd.dtype),
        jnp.zeros((0,), Hd.dtype),
        lo,
        hi,
        jnp.zeros((0,), bool),
        0.0,
    )


def _rows_map(fn, mesh, axis_name):
    """fn(Hd, *row_args) vmapped over rows; with a mesh, rows are split over `axis_name` by shard_map."""

    def local(Hd, *rows):
        return jax.vmap(lambda *r: fn(Hd, *r))(*rows)

    if mesh is None:
        return local
    from jax.sharding import PartitionSpec as P

    def sharded(Hd, *rows):
        return _shard_map(local, mesh, (P(),) + (P(axis_name),) * len(rows), P(axis_name))(Hd, *rows)

    return sharded


_ROW_QPS = {"rapdhg": _paper.row_problem, "rapdhg_sum": _row_qp}  # method -> one row's QP builder


@partial(jax.jit, static_argnames=("cfg", "form", "mesh", "axis_name"))
def _pdhg_start(Hd, free, fixed_delta, x0, ids, *, cfg, form, mesh, axis_name):
    """The start states of rows `ids` (gathered here, on the device)."""
    row_qp = _ROW_QPS[form]

    def one(H, f, d, x):
        prob = row_qp(H, f, d)
        return _pdhg.start(*prob, x, jnp.zeros(prob[3].shape, H.dtype), cfg)

    return _rows_map(one, mesh, axis_name)(Hd, free[ids], fixed_delta[ids], x0[ids])


@partial(jax.jit, static_argnames=("cfg", "form", "mesh", "axis_name", "segment"))
def _pdhg_advance(Hd, free, fixed_delta, ids, state, *, cfg, form, mesh, axis_name, segment):
    """Every slot `segment` more iterations (or until it terminates); slot s holds row ids[s]."""
    row_qp = _ROW_QPS[form]
    return _rows_map(lambda H, f, d, st, u: _pdhg.advance(*row_qp(H, f, d), st, cfg, u), mesh, axis_name)(
        Hd, free[ids], fixed_delta[ids], state, state.it + segment
    )


@partial(jax.jit, static_argnames=("cfg", "form", "mesh", "axis_name"), donate_argnums=(7,))
def _pdhg_collect(Hd, free, fixed_delta, ids, state, slots, rows, out, *, cfg, form, mesh, axis_name):
    """Finish every slot and write slots[j]'s (Δ, residual, iterations, OPTIMAL) into out at rows[j]
    (rows[j] = R, out of range, for padding entries: dropped)."""
    row_qp = _ROW_QPS[form]

    def one(H, f, d, st):
        x, _, status, its, ci = _pdhg.finish(*row_qp(H, f, d), st, cfg)
        res = jnp.maximum(jnp.maximum(ci[5], ci[6]), ci[8])
        return jnp.where(f, x, d), res, its.astype(jnp.int32), status == int(TerminationStatus.OPTIMAL)

    got = _rows_map(one, mesh, axis_name)(Hd, free[ids], fixed_delta[ids], state)
    return tuple(o.at[rows].set(g[slots], mode="drop") for o, g in zip(out, got))


@partial(jax.jit, static_argnames=("R", "n"))
def _pdhg_buffers(*, R, n):
    return jnp.zeros((R, n), jnp.float32), jnp.zeros(R, jnp.float32), jnp.zeros(R, jnp.int32), jnp.zeros(R, bool)


@partial(jax.jit, static_argnames=("size",))
def _blank_state(new, *, size):
    """A batch of `size` finished (empty) slots shaped like the states in `new`."""
    st = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a[:1], (size,) + a.shape[1:]), new)
    return st._replace(done=jnp.ones_like(st.done))


@jax.jit
def _fill_slots(state, new, slots):
    """state[slots[j]] = new[j] (slots[j] out of range: dropped)."""
    return jax.tree_util.tree_map(lambda a, b: a.at[slots].set(b, mode="drop"), state, new)


@jax.jit
def _regather(state, keep, n_live):
    """The batch rebuilt from slots `keep` (live ones first); slots from n_live on are marked empty."""
    st = jax.tree_util.tree_map(lambda a: a[keep], state)
    return st._replace(done=st.done | (jnp.arange(keep.shape[0]) >= n_live))


def _bucket(k: int, pool: int, ndev: int) -> int:
    """Batch size for k rows over ndev devices: per device the next power of two ≥ k/ndev (at least 8),
    at most `pool`; times ndev."""
    per_dev, b = -(-k // ndev), 8
    while b < per_dev:
        b *= 2
    return min(b, pool) * ndev


def _rapdhg_rows(Hd, cfg: PdhgConfig, free, fixed_delta, x0, *, form: str, pool: int, segment: int, mesh, axis_name):
    """raPDHG for all rows, a pool of `pool` rows (per device) at a time, run in segments of `segment`
    iterations. Between segments the finished rows are collected and their slots refilled with waiting
    rows, or, once none wait, the batch shrinks to the live rows; so the batch never runs on behind its
    slowest row as one vmapped while_loop does. Each row's iterates are those of `solve_dense` alone.

    Hd (n, n); free, fixed_delta, x0: device (R, n); form: a key of _ROW_QPS (the row QP's construction).
    Returns device (delta (R, n), res, its, ok). The scheduling is host bookkeeping of row ids: the only
    thing that comes back per segment is the batch's done flags (one bool per slot)."""
    R, n = free.shape
    ndev = 1 if mesh is None else int(mesh.shape[axis_name])
    kw = dict(cfg=cfg, form=form, mesh=mesh, axis_name=axis_name)
    out = _pdhg_buffers(R=R, n=n)
    slot_row = np.full(0, -1)  # row id held by each slot of the batch (-1: empty)
    state = None
    nxt = 0  # next row waiting to start

    while nxt < R or (slot_row >= 0).any():
        live = np.flatnonzero(slot_row >= 0)
        waiting = R - nxt
        size = _bucket(len(live) + waiting, pool, ndev)
        if state is None or size != len(slot_row):  # (re)build the batch: live rows first
            keep = np.concatenate([live, np.full(size - len(live), live[0] if len(live) else 0)])
            if state is not None:
                state = _regather(state, put(keep, np.int32), put(len(live), np.int32))
            slot_row = np.concatenate([slot_row[live], np.full(size - len(live), -1)])
        empty = np.flatnonzero(slot_row < 0)
        if waiting and len(empty):  # start waiting rows in the empty slots
            take = empty[:waiting]
            ids = np.arange(nxt, nxt + len(take))
            nxt += len(take)
            nb = _bucket(len(take), pool, ndev)
            new = _pdhg_start(
                Hd, free, fixed_delta, x0, put(np.concatenate([ids, np.full(nb - len(ids), ids[0])]), np.int32), **kw
            )
            if state is None:
                state = _blank_state(new, size=len(slot_row))
            slots = np.concatenate([take, np.full(nb - len(take), len(slot_row))])  # padding: out of range
            state = _fill_slots(state, new, put(slots, np.int32))
            slot_row[take] = ids
        ids = put(np.where(slot_row >= 0, slot_row, 0), np.int32)
        state = _pdhg_advance(Hd, free, fixed_delta, ids, state, segment=segment, **kw)
        done = np.asarray(fetch(state.done)) & (slot_row >= 0)
        if done.any():
            fin = np.flatnonzero(done)
            slots = np.zeros(len(slot_row), np.int32)
            rows = np.full(len(slot_row), R, np.int32)
            slots[: len(fin)], rows[: len(fin)] = fin, slot_row[fin]
            out = _pdhg_collect(Hd, free, fixed_delta, ids, state, put(slots, np.int32), put(rows, np.int32), out, **kw)
            slot_row[fin] = -1
    return out


@partial(jax.jit, static_argnames=("method", "bs", "mesh", "axis_name"))
def _solve_all(Hd, H, mean_diag, W, free, fixed_delta, extra, pcg_args=(), *, method, bs, mesh, axis_name):
    """Solve all (padded) rows, exact or direct; `extra` = (idx, valid) for direct, (y0,) for exact
    (y0 in scaled coordinates); pcg_args = (Hs, s, Pinv, max_iter, rtol) for exact (replicated)."""

    def local(Hd, H, mean_diag, pcg_args, W, free, fixed_delta, *extra):
        R = W.shape[0]
        nb = R // bs

        def batch(args):
            Wb, fb, db, *eb = args
            if method == "exact":
                d, res, its, ok = _pcg_batch(*pcg_args, Wb, fb, db, *eb)
            else:
                d, res, its, ok = _exact_batch(Hd, mean_diag, Wb, fb, db, *eb)
            obj = 0.5 * jnp.sum(jnp.matmul(d, H, precision=_pcg.HI) * d, axis=1)
            return d, res, its, ok, obj

        resh = lambda t: t.reshape((nb, bs) + t.shape[1:])
        outs = jax.lax.map(batch, tuple(resh(t) for t in (W, free, fixed_delta) + tuple(extra)))
        return tuple(o.reshape((R,) + o.shape[2:]) for o in outs)

    if mesh is None:
        return local(Hd, H, mean_diag, pcg_args, W, free, fixed_delta, *extra)
    from jax.sharding import PartitionSpec as P

    row = P(axis_name)
    specs = (P(), P(), P(), jax.tree_util.tree_map(lambda _: P(), pcg_args), row, row, row) + (row,) * len(extra)
    f = _shard_map(local, mesh, specs, (row,) * 5)
    return f(Hd, H, mean_diag, pcg_args, W, free, fixed_delta, *extra)


@partial(jax.jit, static_argnames=("preconditioner",))
def _pcg_setup(Hd, dead, rho, *, preconditioner):
    """Scaled Hessian Ĥ, scale s and the shared preconditioner ((Ĥ+ρI)⁻¹ via Cholesky, or None)."""
    Hs, s = _pcg.scale_hessian(Hd, dead)
    if preconditioner == "jacobi":
        return Hs, s, None
    n = Hs.shape[0]
    A = Hs + rho * jnp.eye(n, dtype=Hs.dtype)
    L = jnp.linalg.cholesky(A)
    Pinv = jax.scipy.linalg.cho_solve((L, True), jnp.eye(n, dtype=Hs.dtype))
    return Hs, s, 0.5 * (Pinv + Pinv.T)


@jax.jit
def _pcg_setup_shared(Hd, dead, Pinv_ref, s_ref):
    """Scaled Hessian Ĥ, scale s, and a reference preconditioner moved into this scaling.

    Pinv_ref ≈ (S_r H_r S_r + ρI)⁻¹ for another damp, i.e. H_r⁻¹ ≈ S_r Pinv_ref S_r; in this solve's
    coordinates (scale s) that is D Pinv_ref D with D = diag(s_ref / s). O(n²): no factorization."""
    Hs, s = _pcg.scale_hessian(Hd, dead)
    d = s_ref / s
    return Hs, s, Pinv_ref * d[:, None] * d[None, :]


class SharedPreconditioner(NamedTuple):
    """An "inverse" preconditioner built once (`shared_preconditioner`) and reused by several exact solves
    of the same H at other damps (auto damping's grid)."""

    Pinv: jax.Array  # (n, n) (Ĥ_r + ρI)⁻¹ in the reference scaling
    s: jax.Array  # (n,) the reference scaling diag(S_r)


def shared_preconditioner(H, damp: float = 0.0, precond_rho: float = 1e-3) -> SharedPreconditioner:
    """The exact method's inverse preconditioner for H damped by damp · mean(diag H), to pass to
    `solve_rows(..., shared=...)` for solves of the same H at other damps."""
    _, Hd, dead, _, _ = _damped_hessian(to_device(H, np.float32), put(damp))
    _, s, Pinv = _pcg_setup(Hd, dead, put(precond_rho), preconditioner="inverse")
    return SharedPreconditioner(Pinv=Pinv, s=s)


def _shard_map(fn, mesh, in_specs, out_specs):
    """shard_map without replication checks (jax.shard_map, or jax.experimental.shard_map on older JAX)."""
    if hasattr(jax, "shard_map"):
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map

    return shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def solve_rows(
    H,
    W,
    keep_mask,
    *,
    damp: float,
    method: str | None = None,
    eps_abs: float | None = None,
    eps_rel: float | None = None,
    iteration_limit: int | None = None,
    W_init=None,
    memory_budget_bytes: int | None = None,
    mesh=None,
    axis_name: str = "rows",
    rtol: float | None = None,
    where: str = "",
    preconditioner: str = "inverse",
    precond_rho: float = 1e-3,
    shared: SharedPreconditioner | None = None,
    rapdhg_segment: int = 1024,
    n_tokens: int | None = None,
) -> RowSolveResult:
    """OPTIMA's per-row weight update for one linear layer (see module docstring).

    H: (in, in) Σ xᵀx; W: (out, in) dense weights; keep_mask: bool (out, in), True = kept. Device arrays stay
    on the device (host arrays are uploaded once); the result's arrays are device arrays.
    Settings left as None take their run default from ``optima_jax.config.default_config().solver`` (method,
    eps_abs, eps_rel, iteration_limit, rtol, memory_budget_gb): one home for each default. ``damp`` has none
    here: the QP's ridge is the caller's decision (0 = the paper's QP; the run default is solver.damp).
    method: "exact" (batched masked PCG, the default), "direct" (per-row Cholesky of the kept sub-system,
        O(k³) per row), "rapdhg" (the paper's QP and raPDHG, eps_abs/eps_rel/iteration_limit; needs
        n_tokens) or "rapdhg_sum" (raPDHG on Σxᵀx with fixed pruned entries).
    n_tokens: rapdhg only: the number of calibration tokens summed into H (H / n_tokens is the paper's Q).
    damp: ridge added as damp · mean(diag H) to the diagonal (every method).
    W_init: (out, in) starting weights for exact and rapdhg_sum (e.g. the selector's); pruned entries are
        ignored. rapdhg starts at Δ = 0, as the paper's code does.
    memory_budget_bytes: rows are solved in batches sized so one batch's work arrays fit this budget.
    mesh/axis_name: if a Mesh is given, row batches are split over its `axis_name` axis with shard_map.
    rtol: exact: per-row stop on the relative residual (scaled coordinates); direct: bound on the backward
        error for `converged`.
    where: a name (e.g. the layer) used in error messages.
    preconditioner: exact only: "inverse" (masked shared (Ĥ+ρI)⁻¹, default) or "jacobi".
    precond_rho: ρ of the inverse preconditioner, relative to Ĥ's unit diagonal.
    iteration_limit: also caps exact's CG iterations per pass (at most min(iteration_limit, 4·in + 100)).
    shared: exact only: reuse a preconditioner built by `shared_preconditioner` for this H at another damp
        instead of factorizing (results are the same solution to rtol; only the iteration count changes).
    rapdhg_segment: rapdhg and rapdhg_sum: iterations between the points where finished rows leave the batch and
        waiting rows take their slots (a row's iterates do not depend on it; it trades host round trips
        against idle slots).
    """
    run = default_config().solver
    method = run.method if method is None else method
    eps_abs = run.eps_abs if eps_abs is None else eps_abs
    eps_rel = run.eps_rel if eps_rel is None else eps_rel
    iteration_limit = run.iteration_limit if iteration_limit is None else iteration_limit
    rtol = run.rtol if rtol is None else rtol
    if memory_budget_bytes is None:
        memory_budget_bytes = int(float(run.memory_budget_gb) * (1 << 30))
    tag = _tag(where)
    if int(rapdhg_segment) < 1:
        raise OptimaError(f"rapdhg_segment must be ≥ 1, got {rapdhg_segment}{tag}")
    if method not in ("exact", "direct", "rapdhg", "rapdhg_sum"):
        raise OptimaError(f"unknown solve method {method!r}: use 'exact', 'direct', 'rapdhg' or 'rapdhg_sum'{tag}")
    if method == "rapdhg" and not (isinstance(n_tokens, (int, np.integer)) and n_tokens >= 1):
        raise OptimaError(
            "method='rapdhg' solves the paper's QP on the mean covariance H / n_tokens: pass n_tokens, "
            f"the number of tokens summed into H (got {n_tokens!r}){tag}"
        )
    if preconditioner not in ("inverse", "jacobi"):
        raise OptimaError(f"unknown preconditioner {preconditioner!r}: use 'inverse' or 'jacobi'{tag}")
    if not (precond_rho > 0 and math.isfinite(precond_rho)):
        raise OptimaError(f"precond_rho must be a finite number > 0, got {precond_rho}{tag}")
    if damp < 0 or not math.isfinite(damp):
        raise OptimaError(f"damp must be a finite number ≥ 0, got {damp}{tag}")
    H, W, mask = _validate(H, W, keep_mask, where)
    W_init = None if W_init is None else to_device(W_init, np.float32)
    R, n = W.shape
    Hn, Hd, dead, mean_diag, lam = _damped_hessian(H, put(damp))
    # rapdhg: every kept entry is a variable, as in the paper's code (a dead input's weight stays at Δ = 0)
    free, fixed_delta = _row_sets(W, mask, dead, all_kept_free=method == "rapdhg")

    ndev = 1 if mesh is None else int(mesh.shape[axis_name])
    if method == "direct":
        k = max(int(fetch(_max_free(free))) if R else 1, 1)
        per_row = 4 * (3 * k * k + 10 * n)
    elif method == "exact":
        k = 0
        per_row = 4 * 16 * n
    else:
        k = 0
        per_row = 4 * 48 * n
    rows_per_dev = -(-R // ndev)
    bs = int(max(1, min(rows_per_dev, memory_budget_bytes // max(per_row, 1))))
    rows_per_dev = -(-rows_per_dev // bs) * bs
    pad = rows_per_dev * ndev - R

    obj = None
    if method == "exact":
        if shared is not None:
            if tuple(shared.Pinv.shape) != (n, n):
                raise OptimaError(f"shared preconditioner is {tuple(shared.Pinv.shape)}, H is {(n, n)}{tag}")
            Hs, s, Pinv = _pcg_setup_shared(Hd, dead, shared.Pinv, shared.s)
        else:
            Hs, s, Pinv = _pcg_setup(Hd, dead, put(precond_rho), preconditioner=preconditioner)
        Wp, fp, dp, y0 = _exact_inputs(W, W_init, free, fixed_delta, s, pad=pad)
        max_iter = int(min(iteration_limit, 4 * n + 100))
        pcg_args = (Hs, s, Pinv, put(max_iter, np.int32), put(rtol))
        extra = (y0,)
    elif method == "direct":
        Wp, fp, dp, order, valid = _direct_inputs(W, free, fixed_delta, k=k, pad=pad)
        pcg_args = ()
        extra = (order, valid)
    else:
        paper = method == "rapdhg"
        Q, x0 = _pdhg_inputs(
            Hd,
            W,
            W_init,
            free,
            fixed_delta,
            put(_paper.hessian_scale(int(n_tokens)) if paper else 1.0),
            paper=paper,
            warm=W_init is not None,
        )
        cfg = PdhgConfig(
            eps_abs=float(eps_abs),
            eps_rel=float(eps_rel),
            iteration_limit=int(iteration_limit),
            continue_after_optimal=paper,  # MPAX's last block of steps
        )
        delta, res, its, ok = _rapdhg_rows(
            Q,
            cfg,
            free,
            fixed_delta,
            x0,
            form=method,
            pool=bs,
            segment=int(rapdhg_segment),
            mesh=mesh,
            axis_name=axis_name,
        )
    if method in ("exact", "direct"):
        delta, res, its, ok, obj = _solve_all(
            Hd, Hn, mean_diag, Wp, fp, dp, extra, pcg_args, method=method, bs=bs, mesh=mesh, axis_name=axis_name
        )
    weight, converged, its, obj, res = _finish(
        W,
        mask,
        Hn,
        delta,
        res,
        its,
        ok,
        obj,
        put(rtol),
        R=R,
        paper=method == "rapdhg",
        exact_like=method in ("exact", "direct"),
    )
    return RowSolveResult(
        weight=weight,
        converged=converged,
        iterations=its,
        objective=obj,
        residual=res,
        damp_value=float(fetch(lam)),
    )


@jax.jit
def _validation_error(W_new, W_dense, H_val):
    d = W_new.astype(jnp.float64) - W_dense.astype(jnp.float64)
    return jnp.sum(jnp.matmul(d, H_val.astype(jnp.float64), precision=_pcg.HI) * d)


def validation_error(W_new, W_dense, H_val) -> float:
    """trace(ΔW H_val ΔWᵀ) with ΔW = W_new − W_dense, in float64 on the device (one scalar back): auto damping
    ranks damps whose errors differ in the 7th digit, below float32's resolution."""
    args = (to_device(W_new, np.float32), to_device(W_dense, np.float32), to_device(H_val, np.float32))
    with jax.enable_x64(True):
        return float(fetch(_validation_error(*args)))


@jax.jit
def _take_rows(a, rows):
    return a[rows]


@jax.jit
def _auto_damp_start(W, mask, init, rows, sub):
    """The full solve's start: the selector's weights (W on kept entries without one), the grid's rows."""
    start = jnp.where(mask, W, 0.0) if init is None else init
    return start.at[rows].set(sub)


def auto_damp_solve(
    H,
    W,
    keep_mask,
    H_val,
    grid: Sequence[float] | None = None,
    *,
    row_fraction: float = 0.0625,
    min_rows: int = 32,
    seed: int = 0,
    grid_rtol: float = 1e-3,
    early_stop: bool = True,
    **solver_kw,
) -> AutoDampResult:
    """Pick the damp with the lowest validation error trace(ΔW H_val ΔWᵀ), then solve all rows with it.

    Rows are independent problems and the validation error is a sum over rows, so the grid is scored
    on a random subset of max(min_rows, row_fraction·out) rows (all rows if that is not fewer). The grid
    is scanned from the largest damp down (the best-conditioned solves first), each solve warm-started
    from the previous one and stopped at the looser `grid_rtol` (the errors only have to rank the damps).
    early_stop: stop the scan at the first damp whose error is higher than the best so far (the
    validation error is taken to be unimodal in the damp; the smallest damps are the slowest solves and
    are then never run); their val_errors are None. The chosen damp is then solved on all rows to the
    caller's rtol, reusing the grid's preconditioner for that damp (exact method), its subset rows
    warm-started from the grid. solver_kw: passed to `solve_rows` (method, rtol, memory_budget_bytes, ...).
    H, W, H_val and the weights stay on the device; each validation error comes back as one scalar.
    """
    run = default_config().solver
    grid = run.auto_damp_grid if grid is None else grid  # None: the run default, solver.auto_damp_grid
    where = solver_kw.get("where", "")
    tag = _tag(where)
    if tuple(H_val.shape) != tuple(np.shape(H)):
        raise OptimaError(f"H_val shape {tuple(H_val.shape)} differs from H shape {tuple(np.shape(H))}{tag}")
    Hv = to_device(H_val, np.float32)
    if int(fetch(_nonfinite_counts(Hv))[0]):
        raise OptimaError(f"H_val has non-finite entries{tag}")
    if len(grid) == 0:
        raise OptimaError(f"auto_damp_solve needs a non-empty damp grid{tag}")
    if any(not (g >= 0 and math.isfinite(g)) for g in grid):
        raise OptimaError(f"damp grid values must be finite and ≥ 0, got {tuple(grid)}{tag}")
    H, Wn, mask = _validate(H, W, keep_mask, where)
    R = Wn.shape[0]
    m = min(R, max(int(min_rows), int(math.ceil(row_fraction * R))))
    if m < R:
        rows = put(np.sort(np.random.default_rng(seed).choice(R, m, replace=False)), np.int32)
        Wsub, msub = _take_rows(Wn, rows), _take_rows(mask, rows)
    else:
        rows, Wsub, msub = None, Wn, mask
    kw = dict(solver_kw)
    init = kw.pop("W_init", None)
    init = None if init is None else to_device(init, np.float32)
    final_rtol = kw.pop("rtol", None) or run.rtol
    grid = tuple(float(g) for g in grid)
    own_setup = (kw.get("method") or run.method) == "exact" and kw.get("preconditioner", "inverse") == "inverse"
    prev = None if init is None else (init if rows is None else _take_rows(init, rows))
    errs = [None] * len(grid)
    best = None  # (error, grid index, result on the subset, preconditioner)
    for gi in sorted(range(len(grid)), key=lambda i: -grid[i]):
        pre = shared_preconditioner(H, grid[gi], kw.get("precond_rho", 1e-3)) if own_setup else None
        r = solve_rows(
            H,
            Wsub,
            msub,
            damp=grid[gi],
            W_init=prev,
            rtol=final_rtol if m == R else min(grid_rtol, final_rtol),
            shared=pre,
            **kw,
        )
        prev = r.weight
        errs[gi] = validation_error(prev, Wsub, Hv) * (R / m)
        if best is None or errs[gi] < best[0]:
            best = (errs[gi], gi, r, pre)
        elif early_stop:
            break
    _, bi, sub, pre = best
    if m == R:
        final = sub
    else:
        start = _auto_damp_start(Wn, mask, init, rows, sub.weight)
        final = solve_rows(H, Wn, mask, damp=grid[bi], W_init=start, rtol=final_rtol, shared=pre, **kw)
    return AutoDampResult(
        result=final,
        damp=grid[bi],
        grid=grid,
        val_errors=tuple(errs),
        val_error=validation_error(final.weight, Wn, Hv),
        rows_used=m,
    )
