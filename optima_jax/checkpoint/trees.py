"""Flat HF-name dicts <-> nested pytrees (HF names split on "."), the layout of every saved params tree."""

from __future__ import annotations


def nest(flat: dict[str, object]) -> dict:
    """{"model.layers.0.mlp.up_proj.weight": a} -> {"model": {"layers": {"0": {"mlp": {...}}}}}."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """Inverse of `nest`."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, name))
        else:
            out[name] = v
    return out
