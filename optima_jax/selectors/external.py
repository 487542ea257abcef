"""Externally computed masks (ProxSparse, MaskLLM, ...), loaded from a safetensors file.

File format (see docs/masks.md): a ``.safetensors`` file whose keys are HF weight names,
``model.layers.{i}.{linear}.weight`` (e.g. ``model.layers.3.mlp.down_proj.weight``), and whose values are
keep masks of shape (out_features, in_features), HF layout, dtype ``bool`` or ``uint8`` (any nonzero =
kept). Tensors for linears that are not pruned may be left out. ``save_masks`` writes ``bool``.

Selector use: ``get_selector("external")(W, stats, spec, mask=keep)`` or
``(..., path="masks.safetensors", name="model.layers.3.mlp.down_proj.weight")``.
The weight returned is ``W * keep`` (no update of its own).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from optima_jax.fileio import atomic_write
from optima_jax.selectors.base import SelectionResult, SelectorError, check_inputs, register_selector
from optima_jax.selectors.masks import apply_mask
from optima_jax.transfers import to_device

_ALLOWED = (np.bool_, np.uint8)


def save_masks(path: str, masks: Mapping[str, object]) -> None:
    """Write {HF weight name: keep mask (out, in)} to ``path`` as a bool safetensors file."""
    from safetensors.numpy import save

    out = {}
    for name, m in masks.items():
        a = np.asarray(m)
        if a.ndim != 2:
            raise SelectorError(f"{path}: mask {name!r} must be 2-D (out, in), got shape {a.shape}")
        if a.dtype != np.bool_:
            if a.dtype not in (np.uint8,) and not np.issubdtype(a.dtype, np.integer):
                raise SelectorError(f"{path}: mask {name!r} must be bool or uint8, got {a.dtype}")
            a = a != 0
        out[name] = np.ascontiguousarray(a)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = save(out, metadata={"format": "optima_jax keep masks (True = kept), HF layout (out, in)"})
    atomic_write(Path(path), lambda f: f.write(data), binary=True)


def load_masks(path: str, names=None, shapes: Mapping[str, tuple] | None = None) -> dict[str, np.ndarray]:
    """Read a mask file -> {HF name: bool np.ndarray (out, in)}.

    names: only these keys (missing ones raise). shapes: {name: (out, in)} to check against.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not os.path.isfile(path):
        raise SelectorError(f"mask file not found: {path}")
    try:
        raw = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise SelectorError(f"{path}: cannot read as safetensors mask file ({e})") from None
    keys = list(raw) if names is None else list(names)
    res = {}
    for k in keys:
        if k not in raw:
            raise SelectorError(f"{path}: no mask for {k!r}")
        a = raw[k]
        if a.dtype not in _ALLOWED:
            raise SelectorError(f"{path}: mask {k!r} has dtype {a.dtype}; expected bool or uint8")
        if a.ndim != 2:
            raise SelectorError(f"{path}: mask {k!r} must be 2-D (out, in), got shape {a.shape}")
        if shapes is not None and k in shapes and tuple(a.shape) != tuple(shapes[k]):
            raise SelectorError(
                f"{path}: mask {k!r} has shape {tuple(a.shape)} but the weight has shape {tuple(shapes[k])}"
            )
        res[k] = a != 0
    return res


def check_mask_file(path: str) -> None:
    """Read a mask file's header (names, dtypes, ranks) without its data: a SelectorError now, not at block 0."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise SelectorError(f"mask file not found: {path}")
    try:
        with safe_open(path, "np") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                dtype, shape = sl.get_dtype(), sl.get_shape()
                if dtype not in ("BOOL", "U8"):
                    raise SelectorError(f"{path}: mask {k!r} has dtype {dtype}; expected bool or uint8")
                if len(shape) != 2:
                    raise SelectorError(f"{path}: mask {k!r} must be 2-D (out, in), got shape {tuple(shape)}")
    except (SafetensorError, OSError, ValueError) as e:
        raise SelectorError(f"{path}: cannot read as safetensors mask file ({e})") from None


@register_selector("external")
def external(
    W, stats, spec, *, mask=None, path: str | None = None, name: str | None = None, where: str | None = None
) -> SelectionResult:
    """Apply a given keep mask (``mask=`` array, or ``path=`` + ``name=``) to W (out, in)."""
    where = where or name or "layer"
    W, spec = check_inputs(W, stats, spec, where)
    if mask is None:
        if path is None or name is None:
            raise SelectorError(f"{where}: external selector needs mask=... or path=... and name=...")
        mask = load_masks(path, names=[name])[name]
        src = f"{path}: mask {name!r}"
    else:
        src = f"mask {name!r}" if name else f"{where}: mask"
    if not isinstance(mask, jax.Array):  # from a file or the caller's host array: one explicit upload
        mask = to_device(np.asarray(mask))
    if tuple(mask.shape) != tuple(W.shape):
        raise SelectorError(f"{src} has shape {tuple(mask.shape)} but the weight has shape {tuple(W.shape)}")
    keep = _as_keep(mask)
    return SelectionResult(keep, apply_mask(keep, W), {"selector": "external"})


@jax.jit
def _as_keep(mask):
    return mask if mask.dtype == jnp.bool_ else mask != 0
