"""OPT family (facebook/opt-*): learned positions (offset 2), LayerNorm with bias, pre- or post-norm blocks,
ReLU fc1/fc2 FFN, biases on every projection, optional project_in/project_out (OPT-350m), tied LM head."""

from optima_jax.models.opt.modeling import OPTModel, config_from_hf, positions_from_mask  # noqa: F401
