"""The paper's QP, as its code builds it: the one home of every choice `solver.method=rapdhg` reproduces.

Source: paramathic/optima, `optima/weight_update.py::update_weights_qp` (read at commit 4120601). Per
output row of a linear layer W (out, in), with P the row's pruned entries, MPAX's raPDHG solves

    minimize ½ Δᵀ Q Δ   s.t.  0·Δ = 0  (one all-zero equality row),
                              1ᵀΔ ≥ −1e5  (one dummy inequality row),
                              −w_i ≤ Δ_i ≤ −w_i + 1e-4  for i in P,

where Q is the *mean* input covariance, Σ_samples (xᵀx / tokens_of_sample) / n_samples, i.e. Σxᵀx divided
by the number of calibration tokens when every sample has the same length. It starts from Δ = 0 (no
warm start), runs at eps_abs = eps_rel = 1e-2 for at most 100k iterations, adds the solution to the
weights in bfloat16, and skips the layer when fewer than 95% of the rows of any of its mini-batches
end OPTIMAL (`minibatch_rows`), or when the calibration error does not drop (the pruner's safeguard).

MPAX's stopping test is relative with an absolute floor (tolerance eps · (1 + scale)), so the scale of Q
sets how far from the optimum the solve stops; with the mean covariance that is tens of percent above
the optimum on real layers (docs/results.md), not the tight solve that Σxᵀx would give.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from optima_jax.transfers import fetch, to_device

BOX_WIDTH = 1e-4  # pruned entries are boxed to [−w, −w + BOX_WIDTH], not fixed
DUMMY_INEQUALITY_RHS = -1e5  # the dummy row 1ᵀΔ ≥ −1e5
MIN_OPTIMAL_FRACTION = 0.95  # per mini-batch; below it the layer keeps its selector's weights
MINIBATCH_BUDGET = 128 * 12 * 1024 * 1024  # the code's mini-batch rule: this many entries of n×n per batch


def hessian_scale(n_tokens: int) -> float:
    """The factor that turns Σxᵀx (optima_jax's H) into the paper's mean covariance."""
    if not n_tokens or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive token count, got {n_tokens!r}")
    return 1.0 / float(n_tokens)


def minibatch_rows(out_features: int, in_features: int) -> int:
    """Rows per mini-batch in the paper's code (its 95%-OPTIMAL rule is applied per mini-batch)."""
    return min(out_features, max(1, MINIBATCH_BUDGET // (in_features**2)))


def minibatch_fraction_min(optimal, in_features: int):
    """The lowest fraction of OPTIMAL rows over the paper's mini-batches of a layer (optimal: bool (out,)), as
    a device scalar (jittable: shapes only decide the batches)."""
    ok = optimal.astype(jnp.float32)
    R = ok.shape[0]
    size = minibatch_rows(R, in_features)
    nb = -(-R // size)
    sums = jnp.pad(ok, (0, nb * size - R)).reshape(nb, size).sum(axis=1)
    counts = jnp.minimum(size, R - size * jnp.arange(nb)).astype(jnp.float32)  # the last batch may be short
    return jnp.min(sums / counts)


def min_minibatch_fraction(optimal, in_features: int) -> float:
    """`minibatch_fraction_min` as a python float."""
    return float(fetch(jax.jit(minibatch_fraction_min, static_argnums=1)(to_device(optimal), in_features)))


def row_problem(Q, free, fixed_delta):
    """One row's QP as raPDHG's argument tuple (Q, c, K, rhs, l, u, eq, const).

    Q (n, n) the (possibly damped) mean covariance; free bool (n,) the kept entries; fixed_delta (n,) −w on
    the pruned entries."""
    n = Q.shape[0]
    K = jnp.concatenate([jnp.zeros((1, n), Q.dtype), jnp.ones((1, n), Q.dtype)])
    rhs = jnp.asarray([0.0, DUMMY_INEQUALITY_RHS], Q.dtype)
    lo = jnp.where(free, -jnp.inf, fixed_delta)
    hi = jnp.where(free, jnp.inf, fixed_delta + BOX_WIDTH)
    return Q, jnp.zeros((n,), Q.dtype), K, rhs, lo, hi, jnp.asarray([True, False]), 0.0


def _bf16(x):
    """x rounded to bfloat16, held in float32. reduce_precision, not a cast pair: inside jit XLA may drop a
    float32 -> bfloat16 -> float32 round trip (excess precision), which would skip the paper's rounding."""
    return jax.lax.reduce_precision(x.astype(jnp.float32), exponent_bits=8, mantissa_bits=7)


def cast_weights(W, delta, keep_mask):
    """The paper's write-back: bf16(W) + bf16(Δ) in bfloat16, pruned entries 0; returned as float32 (the same
    bits eagerly and inside jit)."""
    return jnp.where(keep_mask, _bf16(_bf16(W) + _bf16(delta)), 0.0)
