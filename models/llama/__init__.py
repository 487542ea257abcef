"""LLaMA 2/3.x family (also SmolLM2 and other ``model_type: llama`` checkpoints)."""

from optima_jax.models.llama.modeling import config_from_hf  # noqa: F401
