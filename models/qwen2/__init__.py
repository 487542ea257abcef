"""Qwen 2 / 2.5 family."""
from models.qwen2.modeling import config_from_hf  # noqa: F401
