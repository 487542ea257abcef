"""The registry of supported model families (``FAMILIES``, one literal): per family its HF ``model_type``s and
config parsers, its tensor names, its backbone, its block layout and its GGUF names. Everything else asks the
family here."""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Callable

from optima_jax.models import hf_names
from optima_jax.models.config import ModelConfig, UnsupportedModelError
from optima_jax.models.gemma import gguf_names as _gemma_gguf
from optima_jax.models.gemma import modeling as _gemma
from optima_jax.models.gemma import params as _gemma_params
from optima_jax.models.gguf_names import GGUFNames
from optima_jax.models.llama import gguf_names as _llama_gguf
from optima_jax.models.llama import modeling as _llama
from optima_jax.models.mistral import gguf_names as _mistral_gguf
from optima_jax.models.mistral import modeling as _mistral
from optima_jax.models.opt import modeling as _opt
from optima_jax.models.opt import params as _opt_params
from optima_jax.models.qwen2 import gguf_names as _qwen2_gguf
from optima_jax.models.qwen2 import modeling as _qwen2
from optima_jax.models.qwen3 import gguf_names as _qwen3_gguf
from optima_jax.models.qwen3 import modeling as _qwen3
from optima_jax.models.transformer import Backbone


@dataclasses.dataclass(frozen=True)
class Family:
    """What the rest of the package asks of a model family.

    parsers: HF ``model_type`` -> config parser (HF dict -> ModelConfig; it also sets the family's BOS rule).
    names: checkpoint tensor names (``canonical_name``, ``expected_shapes``).
    backbone: the nnx module class of HF's ``model.`` subtree.
    layout: the block's tensors (``LINEAR_NAMES``, ``INPUT_GROUPS`` (which linears share an input, and so which
    are MLP), ``layer_prefix``, ``linear_shapes``, ``block_shapes``).
    gguf: how llama.cpp's GGUF files name the family (``models.gguf_names.GGUFNames``: architectures, tensor
    names, metadata -> config, conventions to undo); None: no GGUF support.
    Families on the core decoder use its names, backbone and layout (``models.hf_names``, ``transformer.Backbone``).
    """

    name: str
    parsers: dict[str, Callable[..., ModelConfig]]
    names: ModuleType = hf_names
    backbone: type = Backbone
    layout: ModuleType = hf_names
    gguf: GGUFNames | None = None


# The one registry of supported families.
FAMILIES: tuple[Family, ...] = (
    Family("llama", {"llama": _llama.config_from_hf}, gguf=_llama_gguf.GGUF),
    Family(
        "mistral",
        {"mistral": _mistral.config_from_hf, "ministral": _mistral.ministral_config_from_hf},
        gguf=_mistral_gguf.GGUF,
    ),
    Family("qwen2", {"qwen2": _qwen2.config_from_hf}, gguf=_qwen2_gguf.GGUF),
    Family("qwen3", {"qwen3": _qwen3.config_from_hf}, gguf=_qwen3_gguf.GGUF),
    Family(
        "gemma",
        {
            "gemma2": _gemma.gemma2_config_from_hf,
            "gemma3_text": _gemma.gemma3_text_config_from_hf,
            "gemma3": _gemma.gemma3_config_from_hf,
        },
        names=_gemma_params,
        gguf=_gemma_gguf.GGUF,
    ),
    Family("opt", {"opt": _opt.config_from_hf}, names=_opt_params, backbone=_opt.OPTModel, layout=_opt_params),
)
_BY_TYPE: dict[str, Family] = {mt: f for f in FAMILIES for mt in f.parsers}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(_BY_TYPE)

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
    if mt not in _BY_TYPE:
        raise UnsupportedModelError(
            f"{where}: unsupported model_type {mt!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return _BY_TYPE[mt].parsers[mt](hf_config, where=where)


def family_of(cfg: ModelConfig) -> Family:
    """The family record of a parsed config."""
    return _BY_TYPE[cfg.model_type]


def params_module(cfg: ModelConfig) -> ModuleType:
    """The family's tensor-name module (``expected_shapes``, ``canonical_name``) for a parsed config."""
    return family_of(cfg).names


def backbone_class(cfg: ModelConfig) -> type:
    """The nnx module class of HF's ``model.`` subtree for this config."""
    return family_of(cfg).backbone


def block_layout(cfg: ModelConfig | None) -> ModuleType:
    """Block tensor layout (linear names, input groups, name prefix, shapes) for this config (None: the core's)."""
    return hf_names if cfg is None else family_of(cfg).layout
