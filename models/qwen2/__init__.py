"""Qwen 2 / 2.5 family."""

from optima_jax.models.qwen2.modeling import config_from_hf  # noqa: F401
