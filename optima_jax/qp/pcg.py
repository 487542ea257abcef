"""Batched masked preconditioned conjugate gradients for OPTIMA's row problems (shared Hessian).

All rows of a batch share one (n, n) Hessian; row j has its own free set F_j (kept, live entries).
Work is done in Jacobi-scaled coordinates: Ĥ = S H S with S = diag(1/sqrt(diag H)), so Ĥ has a unit
diagonal (dead channels, diag H = 0, get S = 1 and are never free). With y = S⁻¹Δ, each row solves

    Ĥ_FF y_F = −Ĥ_FP y_P          (y_P fixed: the pruned entries)

by CG with the masked operator p ↦ F ⊙ (p Ĥ): one (B, n)·(n, n) matmul per iteration for the whole
batch. Each row stops on its own when its relative residual ‖r‖/‖b‖ ≤ rtol (b = the right-hand side
at y_F = 0; ‖r₀‖ when b = 0), when its residual is already ≤ 1e-4 and has not halved in 50 iterations (the float32
floor), when the curvature pᵀĤp is not positive (singular H, solved), or at `max_iter`.

Preconditioners (all shared by every row, applied to the masked residual):
  * "jacobi":  M = I in scaled coordinates (= diag(H)_FF⁻¹ in the original ones).
  * "inverse": M = F ⊙ ((Ĥ + ρI)⁻¹ r) — a principal submatrix of an SPD matrix, so SPD on F;
    one extra matmul per iteration.
The "admm" warm start runs `admm_iters` iterations of ADMM (Boža 2024) with one (Ĥ + ρI)⁻¹ per layer
before CG: y ← ρ(Ĥ+ρI)⁻¹(z − u); z ← proj(y + u); u ← u + y − z.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HI = jax.lax.Precision.HIGHEST


def _mm(x, A):
    return jnp.matmul(x, A, precision=HI)


def scale_hessian(Hd, dead):
    """Ĥ = S Hd S (unit diagonal on live channels) and s = diag(S); dead channels get s = 1, Ĥ row/col 0."""
    d = jnp.diagonal(Hd)
    s = jnp.where(dead, 1.0, jax.lax.rsqrt(jnp.where(dead, 1.0, d)))
    Hs = Hd * s[:, None] * s[None, :]
    Hs = jnp.where(dead[:, None] | dead[None, :], 0.0, Hs)
    return Hs, s


def admm_warm(Hs, Minv_rho, rho, y, free, iters):
    """ADMM on min ½yᵀĤy s.t. y_P fixed. Minv_rho = ρ(Ĥ+ρI)⁻¹. y (B,n) feasible start. Returns feasible z."""
    del rho

    def body(_, c):
        z, u = c
        x = _mm(z - u, Minv_rho)
        zn = jnp.where(free, x + u, z)
        return zn, u + x - zn

    z, _ = jax.lax.fori_loop(0, iters, body, (y, jnp.zeros_like(y)))
    return z


def pcg(Hs, y, free, *, rtol, max_iter, precond=None, stall=50, stall_below=1e-4):
    """Masked PCG for a batch. Hs (n,n) scaled Hessian; y (B,n) start (fixed entries set); free (B,n) bool.

    precond: None (Jacobi in scaled coordinates) or an (n,n) matrix P applied as F ⊙ (r P).
    Returns y, iterations (B,), relative residual (B,) of the recurrence.
    """
    f = free.astype(y.dtype)
    yfix = y * (1.0 - f)
    b = -_mm(yfix, Hs) * f  # rhs at y_F = 0
    bn = jnp.sqrt(jnp.sum(b * b, axis=1))
    r = -_mm(y, Hs) * f
    M = (lambda v: v) if precond is None else (lambda v: _mm(v, precond) * f)
    z = M(r)
    rz = jnp.sum(r * z, axis=1)
    tiny = jnp.finfo(y.dtype).tiny
    rn0 = jnp.sqrt(jnp.sum(r * r, axis=1))
    den = jnp.where(bn > 0, bn, rn0)  # b = 0 (nothing pruned): relative to the start
    rel = lambda r_: jnp.sqrt(jnp.sum(r_ * r_, axis=1)) / jnp.maximum(den, tiny)
    rel0 = rel(r)
    done0 = (rel0 <= rtol) | (rn0 <= 0)
    B = y.shape[0]
    carry = (0, y, r, z, z, rz, done0, jnp.zeros((B,), jnp.int32), rel0, rel0, jnp.zeros((B,), jnp.int32))

    def cond(c):
        k, *_, done, _, _, _, _ = c
        return (k < max_iter) & ~jnp.all(done)

    def body(c):
        k, y, r, z, p, rz, done, its, relr, best, since = c
        q = _mm(p, Hs) * f
        pq = jnp.sum(p * q, axis=1)
        ok = (~done) & (pq > 0)
        alpha = jnp.where(ok, rz / jnp.where(pq > 0, pq, 1.0), 0.0)
        y = y + alpha[:, None] * p
        r = r - alpha[:, None] * q
        zn = M(r)
        rzn = jnp.sum(r * zn, axis=1)
        beta = jnp.where(ok, rzn / jnp.maximum(rz, tiny), 0.0)
        p = jnp.where(ok[:, None], zn + beta[:, None] * p, p)
        z = jnp.where(ok[:, None], zn, z)
        rz = jnp.where(ok, rzn, rz)
        relr = jnp.where(ok, rel(r), relr)
        its = its + ok.astype(jnp.int32)
        improved = relr < 0.5 * best
        best = jnp.where(improved, relr, best)
        since = jnp.where(improved, 0, since + 1)
        done = done | ~ok | (relr <= rtol) | ((since >= stall) & (best <= stall_below))
        return k + 1, y, r, z, p, rz, done, its, relr, best, since

    out = jax.lax.while_loop(cond, body, carry)
    return out[1], out[7], out[8]
