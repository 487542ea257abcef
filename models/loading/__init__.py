"""Model sources -> LoadedModel(config, params, tokenizer); the HF export ``save_hf`` and the gemma-library export
``save_gemma_lib``."""

from optima_jax.models.loading.core import LoadedModel, load_model  # noqa: F401
from optima_jax.models.loading.export import save_hf  # noqa: F401
from optima_jax.models.loading.gemma_ckpt import save_gemma_lib  # noqa: F401
