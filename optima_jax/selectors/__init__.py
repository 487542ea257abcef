"""Mask selectors: pure functions over arrays that choose which weights of one linear to remove.

Every selector has the signature ``fn(W, stats, spec, **opts) -> SelectionResult`` with
``W`` float32 (out, in), ``stats`` a :class:`LinearStats`, ``spec`` a
:class:`optima_jax.sparsity.SparsitySpec` (or anything ``SparsitySpec.parse`` accepts).
``SelectionResult.keep_mask`` is bool (out, in), True = kept; ``SelectionResult.weight`` is
``W * keep_mask`` or, for SparseGPT and Thanos, the method's own updated weights (pruned entries
exactly zero).

Registered names: "magnitude", "wanda", "sparsegpt", "thanos", "external".
"""

from optima_jax.selectors.base import (
    SELECTORS,
    LinearStats,
    SelectionResult,
    SelectorError,
    SelectorFn,
    check_block_args,
    check_inputs,
    get_selector,
    register_selector,
)

# register the built-in selectors
from optima_jax.selectors import magnitude as _magnitude  # noqa: F401
from optima_jax.selectors import wanda as _wanda  # noqa: F401
from optima_jax.selectors import sparsegpt as _sparsegpt  # noqa: F401
from optima_jax.selectors import thanos as _thanos  # noqa: F401
from optima_jax.selectors import external as _external  # noqa: F401

__all__ = [
    "LinearStats",
    "SelectionResult",
    "SELECTORS",
    "register_selector",
    "get_selector",
    "SelectorError",
    "SelectorFn",
    "check_inputs",
    "check_block_args",
]
