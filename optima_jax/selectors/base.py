"""What every selector shares: the statistics it reads, the result it returns, the registry and the input checks.

Re-exported by `optima_jax.selectors`; the selector modules import it from here (no import cycle through the
package).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from optima_jax.errors import OptimaError
from optima_jax.sparsity import SparsitySpec


class SelectorError(OptimaError):
    """Bad input to a mask selector (unknown name, shape mismatch, bad option)."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LinearStats:
    """Calibration statistics of one linear's input.

    H: float32 [in, in] = Σ_tokens xᵀx (un-normalised sum over all calibration tokens).
    n_tokens: number of tokens summed into H.
    """

    H: jax.Array
    n_tokens: Any = dataclasses.field(default=1)

    @property
    def sq_norms(self) -> jax.Array:
        """diag(H) = Σ_tokens x_j², float32 [in]."""
        return jnp.diagonal(self.H)

    @property
    def in_features(self) -> int:
        return int(self.H.shape[-1])


class SelectionResult(NamedTuple):
    """keep_mask: bool (out, in), True = kept. weight: float32 (out, in), zero where pruned.
    info: small dict of diagnostics (python scalars / arrays)."""

    keep_mask: jax.Array
    weight: jax.Array
    info: dict = {}


SelectorFn = Callable[..., SelectionResult]
SELECTORS: dict[str, SelectorFn] = {}


def register_selector(name: str):
    """Decorator: register ``fn`` under ``name`` in :data:`SELECTORS`."""

    def deco(fn: SelectorFn) -> SelectorFn:
        if name in SELECTORS and SELECTORS[name] is not fn:
            raise SelectorError(f"selector {name!r} is already registered")
        SELECTORS[name] = fn
        return fn

    return deco


def get_selector(name: str) -> SelectorFn:
    """Return the selector registered as ``name``; unknown names raise a SelectorError listing the known ones."""
    try:
        return SELECTORS[name]
    except KeyError:
        raise SelectorError(f"unknown selector {name!r}; registered: {sorted(SELECTORS)}") from None


def check_inputs(W, stats: LinearStats, spec, where: str = "layer"):
    """Validate shapes and parse the spec; returns (W as float array, spec)."""
    spec = SparsitySpec.parse(spec)
    if W.ndim != 2:
        raise SelectorError(f"{where}: weight must be 2-D (out, in), got shape {tuple(W.shape)}")
    n_in = W.shape[1]
    if stats is not None:
        if tuple(stats.H.shape) != (n_in, n_in):
            raise SelectorError(
                f"{where}: Hessian shape {tuple(stats.H.shape)} does not match weight shape {tuple(W.shape)} "
                f"(expected ({n_in}, {n_in}))"
            )
    spec.validate_for(n_in, where)
    W = jnp.asarray(W)
    if not jnp.issubdtype(W.dtype, jnp.floating):
        raise SelectorError(f"{where}: weight must be floating point, got {W.dtype}")
    if W.dtype not in (jnp.float32, jnp.float64):
        W = W.astype(jnp.float32)
    return W, spec


def check_block_args(method: str, spec, blocksize: int, mask_scope: str, scopes: tuple, where: str) -> None:
    """Shared argument checks of the block-wise selectors (SparseGPT, Thanos)."""
    if mask_scope not in scopes:
        raise SelectorError(f"{where}: {method} mask_scope must be one of {scopes}, got {mask_scope!r}")
    if blocksize < 1:
        raise SelectorError(f"{where}: {method} blocksize must be positive, got {blocksize}")
    if spec.kind == "nm" and blocksize % spec.m != 0:
        raise SelectorError(f"{where}: {method} blocksize={blocksize} must be a multiple of M={spec.m}")
