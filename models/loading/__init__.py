"""Model sources -> LoadedModel(config, params, tokenizer); and the HF export ``save_hf``."""

from optima_jax.models.loading.core import LoadedModel, load_model  # noqa: F401
from optima_jax.models.loading.export import save_hf  # noqa: F401
