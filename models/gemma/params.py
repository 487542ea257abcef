"""Gemma HF tensor names. Gemma 3 multimodal checkpoints (``Gemma3ForConditionalGeneration``) keep the text model
under ``language_model.model.`` (older) or ``model.language_model.`` (transformers >= 4.52); these map to the
text model's ``model.`` names, and the vision tower / projector are ignored."""

from __future__ import annotations

from optima_jax.models.config import ModelConfig
from optima_jax.models.hf_names import canonical_name as _canonical
from optima_jax.models.hf_names import expected_shapes  # noqa: F401

_PREFIXES = (
    ("language_model.model.", "model."),
    ("model.language_model.", "model."),
    ("language_model.lm_head.", "lm_head."),
)
_IGNORED = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


def canonical_name(name: str, cfg: ModelConfig) -> str | None:
    """Checkpoint name -> text-model HF name, or None when ignored on purpose."""
    if name.startswith(_IGNORED):
        return None
    for old, new in _PREFIXES:
        if name.startswith(old):
            name = new + name[len(old) :]
            break
    return _canonical(name, cfg)
