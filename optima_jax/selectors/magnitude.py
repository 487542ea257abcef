"""Magnitude pruning: remove the weights with the smallest |W|.

Unstructured: by default the comparison is **per output row** (exactly floor(in*ratio) removed in
every row), for consistency with Wanda and the per-row OPTIMA update. ``scope="layer"`` compares
over the whole matrix (the classic layer-wise magnitude baseline, as in Wanda's code; we remove
exactly floor(out*in*ratio) entries, whereas Wanda's ``W_metric <= thresh`` removes one more).
N:M: the M-N smallest |W| of every group of M consecutive inputs are removed.
"""

from __future__ import annotations

import jax.numpy as jnp

from optima_jax.selectors.base import SelectionResult, SelectorError, check_inputs, register_selector
from optima_jax.selectors.masks import apply_mask, keep_mask_for_spec


@register_selector("magnitude")
def magnitude(W, stats=None, spec=0.5, *, scope: str = "row", where: str = "layer") -> SelectionResult:
    """W (out, in) float32; stats unused (may be None). Returns W*mask."""
    W, spec = check_inputs(W, stats, spec, where)
    if scope not in ("row", "layer"):
        raise SelectorError(f"{where}: magnitude scope must be 'row' or 'layer', got {scope!r}")
    keep = keep_mask_for_spec(jnp.abs(W), spec, scope)
    return SelectionResult(keep, apply_mask(keep, W), {"selector": "magnitude", "scope": scope})
