"""Shared OBS preliminaries of SparseGPT and Thanos (float32 unless given float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from optima_jax.selectors.base import SelectorError
from optima_jax.transfers import fetch

HIGHEST = jax.lax.Precision.HIGHEST


def mm(a, b):
    return jnp.matmul(a, b, precision=HIGHEST)


def prepare(W, H, percdamp: float):
    """SparseGPT's preamble. Returns (W with dead columns zeroed, U upper with (H+damp I)^-1 = UᵀU, dead).

    dead = diag(H) == 0: H_ii := 1 and W[:, i] := 0; damp = percdamp * mean(diag H) (after the dead fix).
    For any i, (H[i:, i:])^-1 = U[i:, i:]ᵀ U[i:, i:].
    """
    n = H.shape[0]
    H = H.astype(W.dtype)
    dg = jnp.diagonal(H)
    dead = dg == 0
    H = H + jnp.diag(dead.astype(H.dtype))
    W = jnp.where(dead[None, :], 0, W)
    damp = percdamp * jnp.mean(jnp.diagonal(H))
    H = H + damp * jnp.eye(n, dtype=H.dtype)
    L = jnp.linalg.cholesky(H)
    eye = jnp.eye(n, dtype=H.dtype)
    Hinv = jax.scipy.linalg.cho_solve((L, True), eye)
    Hinv = 0.5 * (Hinv + Hinv.T)
    U = jnp.triu(jnp.linalg.cholesky(Hinv).T)
    return W, U, dead


def check_factorized(ok, method: str, percdamp: float, where: str) -> None:
    """Raise a one-line SelectorError unless the method's device flag ``ok`` says its factors stayed finite."""
    if not bool(fetch(ok)):
        raise SelectorError(
            f"{where}: {method} Cholesky of the damped Hessian failed (non-finite); increase percdamp (now {percdamp})"
        )
