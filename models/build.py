"""Build an NNX model from (ModelConfig, params dict) and back."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from optima_jax.models.config import ModelConfig
from optima_jax.models.errors import ParamsError
from optima_jax.models.registry import params_module
from optima_jax.models.causal_lm import CausalLM


def _name(path) -> str:
    return ".".join(str(p) for p in path)


def validate_params(cfg: ModelConfig, params: dict, where: str = "params") -> None:
    """Every expected tensor present with the right shape, nothing unexpected; else a one-line ParamsError."""
    expected = params_module(cfg).expected_shapes(cfg)
    missing = [k for k in expected if k not in params]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ParamsError(f"{where}: missing tensors {', '.join(missing[:3])}{more}")
    unexpected = [k for k in params if k not in expected]
    if unexpected:
        more = f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else ""
        raise ParamsError(f"{where}: unexpected tensors {', '.join(unexpected[:3])}{more}")
    for k, shp in expected.items():
        got = tuple(np.shape(params[k]))
        if got != tuple(shp):
            raise ParamsError(f"{where}: tensor {k} has shape {got}, expected {tuple(shp)} from the config")


def build_model(config: ModelConfig, params: dict, dtype=jnp.float32) -> CausalLM:
    """flax.nnx CausalLM with weights from a flat HF-named params dict (HF layout), cast to ``dtype``."""
    validate_params(config, params)
    abstract = nnx.eval_shape(lambda: CausalLM(config, dtype))
    graphdef, state = nnx.split(abstract)
    flat = []
    for path, var in nnx.to_flat_state(state):
        flat.append((path, var.replace(jnp.asarray(params[_name(path)], dtype=dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def to_params_dict(model: CausalLM) -> dict[str, np.ndarray]:
    """Flat HF-named dict of numpy arrays (HF layout, the model's dtype); inverse of :func:`build_model`."""
    return {_name(path): np.asarray(var[...]) for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
