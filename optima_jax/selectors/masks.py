"""Jit-safe mask helpers: remove the entries with the smallest metric.

Ties are broken by position (stable sort, lower index removed first), as the reference codes'
``torch.sort(..., stable=True)`` does.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def ranks(metric: jax.Array) -> jax.Array:
    """Rank of each entry along the last axis in ascending stable order (0 = smallest)."""
    order = jnp.argsort(metric, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


def _remove_smallest(metric: jax.Array, k: int) -> jax.Array:
    """metric (rows, n) -> bool keep mask without the k smallest entries of every row: one stable sort and a
    scatter (the ranks of `ranks` need a second sort)."""
    order = jnp.argsort(metric, axis=-1, stable=True)[:, :k]
    rows = jnp.arange(metric.shape[0])[:, None]
    return jnp.ones(metric.shape, bool).at[rows, order].set(False)


@partial(jax.jit, static_argnames=("k",))
def keep_mask_per_row(metric: jax.Array, k: int) -> jax.Array:
    """metric (out, in) -> bool keep mask removing exactly the k smallest entries of every row."""
    return _remove_smallest(metric, k)


@partial(jax.jit, static_argnames=("k",))
def keep_mask_layer(metric: jax.Array, k: int) -> jax.Array:
    """metric (out, in) -> bool keep mask removing exactly the k smallest entries of the whole matrix."""
    return _remove_smallest(metric.reshape(1, -1), k).reshape(metric.shape)


@partial(jax.jit, static_argnames=("n", "m"))
def keep_mask_nm(metric: jax.Array, n: int, m: int) -> jax.Array:
    """metric (out, in), in % m == 0 -> bool keep mask keeping the n largest of every m consecutive inputs."""
    return _remove_smallest(metric.reshape(-1, m), m - n).reshape(metric.shape)


def keep_mask_for_spec(metric: jax.Array, spec, scope: str = "row") -> jax.Array:
    """Keep mask for a SparsitySpec: per row (or layer-wide, scope="layer") for unstructured; per group for N:M."""
    if spec.kind == "nm":
        return keep_mask_nm(metric, spec.n, spec.m)
    if scope == "row":
        return keep_mask_per_row(metric, spec.expected_pruned_per_row(metric.shape[1]))
    return keep_mask_layer(metric, int(metric.size * spec.ratio))


@jax.jit
def apply_mask(keep: jax.Array, W: jax.Array) -> jax.Array:
    """W with the pruned entries (keep False) exactly 0, in W's dtype (jitted: no host scalar crosses)."""
    return jnp.where(keep, W, jnp.zeros((), W.dtype))


def lexsort_metric(primary: jax.Array, secondary: jax.Array) -> jax.Array:
    """A float metric ordering entries by ``primary`` then ``secondary`` (both (out, in), per row).

    Returns per-row dense ranks as float32, usable with the helpers above.
    """
    order = jnp.lexsort((secondary, primary), axis=-1)
    return jnp.argsort(order, axis=-1, stable=True).astype(jnp.float32)
