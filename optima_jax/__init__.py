"""optima_jax: OPTIMA one-shot post-training pruning for LLMs in JAX/Flax."""

__version__ = "0.1.0"
