"""Wanda (Sun et al. 2023, locuslab/wanda ``lib/prune.py``): metric |W_ij| * ||X_j||_2.

||X_j||_2² = diag(H)_j = Σ_tokens x_j². Wanda's code uses sqrt(scaler_row) with scaler_row = diag(H)/n_tokens;
the constant factor does not change any ranking. Comparison group: each output row (unstructured:
exactly floor(in*ratio) smallest removed per row, stable sort, lower index first on ties; N:M: the M-N
smallest in each group of M consecutive inputs).

``shift_zero_metrics=True``: entries whose metric is exactly 0 (dead input channels, diag(H)=0, or
zero weights) are all tied under the plain metric and would be removed in index order. With this
option ties among them are broken by |W| (smaller |W| removed first); they still rank below every
entry with a positive metric.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from optima_jax.selectors.base import SelectionResult, check_inputs, register_selector
from optima_jax.selectors.masks import apply_mask, keep_mask_for_spec, lexsort_metric


def wanda_metric(W, sq_norms):
    """|W| * sqrt(diag H): (out, in)."""
    return jnp.abs(W) * jnp.sqrt(jnp.maximum(sq_norms.astype(W.dtype), 0))[None, :]


@register_selector("wanda")
def wanda(W, stats, spec, *, shift_zero_metrics: bool = False, where: str = "layer") -> SelectionResult:
    """W (out, in) float32, stats.H (in, in). Returns W*mask (no weight update)."""
    W, spec = check_inputs(W, stats, spec, where)
    keep = _wanda_keep(W, stats.sq_norms, spec=spec, shift=bool(shift_zero_metrics))
    return SelectionResult(keep, apply_mask(keep, W), {"selector": "wanda"})


@partial(jax.jit, static_argnames=("spec", "shift"))
def _wanda_keep(W, sq_norms, *, spec, shift):
    metric = wanda_metric(W, sq_norms)
    if shift:
        metric = lexsort_metric(metric, jnp.abs(W))
    return keep_mask_for_spec(metric, spec, "row")
