"""Errors of the models package (all OptimaError, i.e. ValueError, with one-line messages naming path/tensor)."""

from optima_jax.models.config import ModelConfigError, UnsupportedModelError  # noqa: F401
from optima_jax.errors import OptimaError


class ParamsError(OptimaError):
    """A params dict or checkpoint that does not match the config (missing/unexpected tensor, wrong shape)."""


class CheckpointError(OptimaError):
    """A model source that cannot be read: missing directory/file, corrupt or truncated safetensors."""


class GGUFError(OptimaError):
    """A GGUF file that is missing, malformed, or of an architecture we do not port."""
