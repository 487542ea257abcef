"""Mistral HF tensor names: the checkpoint uses the core decoder's names directly (no biases)."""

from optima_jax.models.hf_names import canonical_name, expected_shapes  # noqa: F401
