"""The block API used by the pruning engine (see docs/architecture.md)."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from optima_jax.models.config import ModelConfig
from optima_jax.models.errors import ParamsError
from optima_jax.models.registry import block_layout
from optima_jax.models.causal_lm import CausalLM


def linear_names(config: ModelConfig | None) -> list[str]:
    """Prunable linears of a block, in execution order (``None``: the core decoder's)."""
    return list(block_layout(config).LINEAR_NAMES)


def input_groups(config: ModelConfig | None) -> dict[str, list[str]]:
    """Group name -> linears that read the same input array (one Hessian per group)."""
    return {k: list(v) for k, v in block_layout(config).INPUT_GROUPS.items()}


def mlp_linears(config: ModelConfig | None) -> dict[str, str]:
    """The family's MLP linears -> the side their intermediate dimension is on: "out" (rows: gate/up, OPT's fc1)
    or "in" (columns: down, OPT's fc2). From the family's INPUT_GROUPS (``mlp_in`` / ``mlp_out``), the one home
    of this knowledge: ``prune_scope=mlp`` and ``mesh.shard_params`` both ask here."""
    groups = block_layout(config).INPUT_GROUPS
    return {**{n: "out" for n in groups["mlp_in"]}, **{n: "in" for n in groups["mlp_out"]}}


def layer_prefix(config: ModelConfig, i: int) -> str:
    """HF name prefix of block ``i``'s tensors: ``model.layers.{i}.`` (OPT: ``model.decoder.layers.{i}.``)."""
    return block_layout(config).layer_prefix(i)


def weight_name(config: ModelConfig, i: int, name: str) -> str:
    """The HF tensor name of linear ``name``'s weight in block ``i``, e.g. ``model.layers.3.mlp.down_proj.weight``
    or, for OPT, ``model.decoder.layers.3.fc2.weight``."""
    return f"{layer_prefix(config, i)}{name}.weight"


def block_params(params: dict, config: ModelConfig, i: int) -> dict:
    """Block ``i``'s tensors from a flat HF params dict: linear name -> W (out, in), plus every other tensor of the
    block under its suffix (``input_layernorm.weight``, ``self_attn.q_proj.bias``...)."""
    _check_layer(config, i)
    layout = block_layout(config)
    prefix = layout.layer_prefix(i)
    names = layout.LINEAR_NAMES
    out = {name: params[f"{prefix}{name}.weight"] for name in names}
    for suffix in layout.block_shapes(config):
        if not any(suffix == f"{n}.weight" for n in names):
            out[suffix] = params[prefix + suffix]
    return out


def _check_layer(config: ModelConfig, i: int) -> None:
    if not 0 <= i < config.num_layers:
        raise ParamsError(f"layer index {i} out of range: the model has {config.num_layers} layers")


def _linear(model: CausalLM, i: int, name: str):
    _check_layer(model.config, i)
    names = block_layout(model.config).LINEAR_NAMES
    if name not in names:
        raise ParamsError(
            f"{layer_prefix(model.config, i).rstrip('.')}: unknown linear {name!r} (known: {', '.join(names)})"
        )
    mod = model.layers[i]
    for part in name.split("."):
        mod = getattr(mod, part)
    return mod


def get_linear(model: CausalLM, i: int, name: str) -> jax.Array:
    """W (out, in) of linear ``name`` in block ``i``, in the model's dtype."""
    return _linear(model, i, name).weight[...]


def set_linear(model: CausalLM, i: int, name: str, W) -> None:
    """Replace W (out, in) of linear ``name`` in block ``i`` in place (cast to the model's dtype)."""
    lin = _linear(model, i, name)
    expected = block_layout(model.config).linear_shapes(model.config)[name]
    if tuple(W.shape) != expected:
        raise ParamsError(
            f"{weight_name(model.config, i, name)}: new weight has shape {tuple(W.shape)}, expected {expected}"
        )
    lin.weight[...] = jnp.asarray(W, dtype=lin.weight[...].dtype)


@functools.lru_cache(maxsize=64)
def _jitted_block(graphdef) -> Callable:
    def fn(block_state, h, positions, capture: bool = False):
        layer = nnx.merge(graphdef, block_state)
        return layer(h, positions, capture=capture)

    return jax.jit(fn, static_argnames="capture")


def block_fn(model: CausalLM, i: int) -> Callable:
    """Pure jitted ``fn(block_state, h, positions, capture=False) -> h_out | (h_out, inputs)`` for block ``i``.

    ``block_state = nnx.state(model.layers[i])``; h [B, T, D]; positions int [B|1, T]. ``capture`` is static.
    Blocks with the same structure (e.g. all sliding layers) share one compiled function. Under jit the
    ``inputs`` dict comes back key-sorted and q/k/v (gate/up) inputs are equal arrays, not one object.
    """
    _check_layer(model.config, i)
    graphdef, _ = nnx.split(model.layers[i])
    return _jitted_block(graphdef)
