"""Mistral family (Mistral 7B and ``model_type: ministral`` checkpoints)."""

from optima_jax.models.mistral.modeling import config_from_hf, ministral_config_from_hf  # noqa: F401
