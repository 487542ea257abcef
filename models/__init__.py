"""Flax NNX ports of LLaMA 3.x, Mistral/Ministral, Qwen 2/2.5, Qwen 3, Gemma 2/3 (text) and OPT, with HF / GGUF loading
and HF export."""

from optima_jax.models import api  # noqa: F401
from optima_jax.models.build import build_model, to_params_dict, validate_params  # noqa: F401
from optima_jax.models.config import ModelConfig, RopeSpec  # noqa: F401
from optima_jax.models.errors import CheckpointError, ModelConfigError, ParamsError, UnsupportedModelError  # noqa: F401
from optima_jax.models.loading import LoadedModel, load_model, save_gemma_lib, save_hf  # noqa: F401
from optima_jax.models.registry import SUPPORTED_MODEL_TYPES, config_from_hf  # noqa: F401
from optima_jax.models.causal_lm import CausalLM, forward  # noqa: F401
