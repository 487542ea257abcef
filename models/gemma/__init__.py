"""Gemma 2 and Gemma 3 (text) family."""

from optima_jax.models.gemma.modeling import gemma2_config_from_hf, gemma3_config_from_hf, gemma3_text_config_from_hf  # noqa: F401
