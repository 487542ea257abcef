"""Qwen 3 (dense) family."""

from optima_jax.models.qwen3.modeling import config_from_hf  # noqa: F401
