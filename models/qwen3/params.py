"""Qwen 3 HF tensor names: the core decoder's names plus per-head q/k RMSNorm weights (handled by ``qk_norm``)."""

from optima_jax.models.hf_names import canonical_name, expected_shapes  # noqa: F401
