"""Qwen2 HF tensor names: the core decoder's names plus q/k/v biases (handled by ``qkv_bias``)."""

from optima_jax.models.hf_names import canonical_name, expected_shapes  # noqa: F401
