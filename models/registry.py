"""Registry of supported HF ``model_type``s: config parser and tensor-name module per type."""

from __future__ import annotations

from types import ModuleType
from typing import Callable

from optima_jax.models import hf_names
from optima_jax.models.config import ModelConfig, UnsupportedModelError
from optima_jax.models.gemma import modeling as _gemma
from optima_jax.models.gemma import params as _gemma_params
from optima_jax.models.llama import modeling as _llama
from optima_jax.models.llama import params as _llama_params
from optima_jax.models.mistral import modeling as _mistral
from optima_jax.models.mistral import params as _mistral_params
from optima_jax.models.opt import modeling as _opt
from optima_jax.models.opt import params as _opt_params
from optima_jax.models.qwen2 import modeling as _qwen2
from optima_jax.models.qwen2 import params as _qwen2_params
from optima_jax.models.qwen3 import modeling as _qwen3
from optima_jax.models.qwen3 import params as _qwen3_params
from optima_jax.models.transformer import Backbone

_PARSERS: dict[str, Callable[..., ModelConfig]] = {
    "llama": _llama.config_from_hf,
    "qwen2": _qwen2.config_from_hf,
    "qwen3": _qwen3.config_from_hf,
    "mistral": _mistral.config_from_hf,
    "ministral": _mistral.ministral_config_from_hf,
    "gemma2": _gemma.gemma2_config_from_hf,
    "gemma3_text": _gemma.gemma3_text_config_from_hf,
    "gemma3": _gemma.gemma3_config_from_hf,
    "opt": _opt.config_from_hf,
}
_PARAMS: dict[str, ModuleType] = {
    "llama": _llama_params,
    "qwen2": _qwen2_params,
    "qwen3": _qwen3_params,
    "mistral": _mistral_params,
    "ministral": _mistral_params,
    "gemma2": _gemma_params,
    "gemma3_text": _gemma_params,
    "opt": _opt_params,
}
# Families whose blocks differ from the core decoder: model_type -> (backbone class, block layout module with
# LINEAR_NAMES, INPUT_GROUPS, layer_prefix, linear_shapes, block_shapes). Others use models.transformer.Backbone
# and models.hf_names.
_BACKBONES: dict[str, type] = {"opt": _opt.OPTModel}
_LAYOUTS: dict[str, ModuleType] = {"opt": _opt_params}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(_PARSERS)

# Relatives of the supported families that are a different architecture: model_type -> what is not ported.
_NOT_PORTED: dict[str, str] = {
    "qwen3_moe": "Qwen 3 mixture-of-experts: routed expert MLPs are not ported, only dense Qwen 3 ('qwen3')",
    "qwen3_next": "Qwen3-Next: hybrid linear attention and expert MLPs are not ported, only dense Qwen 3 ('qwen3')",
    "qwen2_moe": "Qwen 2 mixture-of-experts: routed expert MLPs are not ported, only dense Qwen 2 ('qwen2')",
    "mixtral": "Mixtral: routed expert MLPs are not ported, only dense Mistral ('mistral')",
    "ministral3": "Ministral 3: position-dependent query scaling and YaRN rope are not ported, "
    "only Mistral ('mistral', 'ministral')",
    "mistral3": "Mistral 3: a vision-language model; only text Mistral ('mistral', 'ministral') is ported",
}


def config_from_hf(hf_config: dict, where: str = "config.json") -> ModelConfig:
    """HF config dict -> ModelConfig; an unknown ``model_type`` is an error listing the supported ones."""
    if not isinstance(hf_config, dict):
        raise UnsupportedModelError(f"{where}: expected a JSON object, got {type(hf_config).__name__}")
    mt = hf_config.get("model_type")
    if mt in _NOT_PORTED:
        raise UnsupportedModelError(f"{where}: unsupported model_type {mt!r}: {_NOT_PORTED[mt]}")
    if mt not in _PARSERS:
        raise UnsupportedModelError(
            f"{where}: unsupported model_type {mt!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return _PARSERS[mt](hf_config, where=where)


def params_module(cfg: ModelConfig) -> ModuleType:
    """The family's ``params`` module (``expected_shapes``, ``canonical_name``) for a parsed config."""
    return _PARAMS[cfg.model_type]


def backbone_class(cfg: ModelConfig) -> type:
    """The nnx module class of HF's ``model.`` subtree for this config."""
    return _BACKBONES.get(cfg.model_type, Backbone)


def block_layout(cfg: ModelConfig | None) -> ModuleType:
    """Block tensor layout (linear names, input groups, name prefix, shapes) for this config (None: the core's)."""
    if cfg is None:
        return hf_names
    return _LAYOUTS.get(cfg.model_type, hf_names)
