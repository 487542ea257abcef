"""How llama.cpp's GGUF files name a family, as data: the record each family fills in (:class:`GGUFNames`, the
``gguf`` field of its ``registry.Family``) and the core decoder's tensor-name tables it starts from.

``models.loading.gguf`` reads and de-quantizes the file and asks the family, through these records: which
``general.architecture`` (and file name) it claims, its per-block tensor names, its metadata keys beyond the shared
ones, and the llama.cpp conventions to undo (permuted q/k rows, norms stored as ``1 + w``). Tensor names come from
the ``gguf`` package's own tables (``gguf.constants.TENSOR_NAMES``), as llama.cpp writes them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
from gguf.constants import MODEL_TENSOR, TENSOR_NAMES

from optima_jax.models.errors import GGUFError


def block_part(t: MODEL_TENSOR) -> str:
    """The per-block part of a llama.cpp tensor name (``attn_q_norm`` of ``blk.{bid}.attn_q_norm``)."""
    return TENSOR_NAMES[t].removeprefix("blk.{bid}.")


def by_gguf_name(table: dict[MODEL_TENSOR, str]) -> dict[str, str]:
    """A table keyed by llama.cpp tensor -> the same table keyed by its per-block name."""
    return {block_part(t): hf for t, hf in table.items()}


# per-block GGUF tensor -> HF suffix (inside model.layers.N.), shared by every family on the core decoder
BLOCK_COMMON = {
    MODEL_TENSOR.ATTN_Q: "self_attn.q_proj",
    MODEL_TENSOR.ATTN_K: "self_attn.k_proj",
    MODEL_TENSOR.ATTN_V: "self_attn.v_proj",
    MODEL_TENSOR.ATTN_OUT: "self_attn.o_proj",
    MODEL_TENSOR.ATTN_NORM: "input_layernorm",
    MODEL_TENSOR.FFN_GATE: "mlp.gate_proj",
    MODEL_TENSOR.FFN_UP: "mlp.up_proj",
    MODEL_TENSOR.FFN_DOWN: "mlp.down_proj",
    MODEL_TENSOR.ATTN_Q_NORM: "self_attn.q_norm",
    MODEL_TENSOR.ATTN_K_NORM: "self_attn.k_norm",
}
# the core decoder's block (one norm before attention, one before the MLP)
BLOCK_NAMES = by_gguf_name({**BLOCK_COMMON, MODEL_TENSOR.FFN_NORM: "post_attention_layernorm"})
# tensors outside the blocks: GGUF name (without .weight/.bias) -> HF name
TOP_NAMES = {
    TENSOR_NAMES[MODEL_TENSOR.TOKEN_EMBD]: "model.embed_tokens",
    TENSOR_NAMES[MODEL_TENSOR.OUTPUT_NORM]: "model.norm",
    TENSOR_NAMES[MODEL_TENSOR.OUTPUT]: "lm_head",
}
# GGUF tensors that carry no HF parameter (consumed into the config instead)
NON_PARAM_TENSORS = {TENSOR_NAMES[MODEL_TENSOR.ROPE_FREQS] + ".weight"}


@dataclasses.dataclass(frozen=True)
class GGUFFile:
    """One GGUF file's metadata, as a family's config hook reads it."""

    meta: dict[str, Any]
    arch: str  # general.architecture
    model_type: str  # the HF model_type the family gives the file
    tensor_names: set[str]
    where: str
    # llama.cpp's per-frequency rope divisors (tensor ``rope_freqs.weight``), if present
    rope_freqs: np.ndarray | None = None

    def get(self, key: str, default=None, required: bool = False):
        """The architecture's metadata value ``<arch>.<key>`` (``default`` when absent; an error if required)."""
        full = f"{self.arch}.{key}"
        if full in self.meta:
            return self.meta[full]
        if required:
            raise GGUFError(f"{self.where}: required metadata key {full!r} is missing")
        return default

    def window(self) -> int | None:
        """``attention.sliding_window`` as an int (None when the file sets none)."""
        window = self.get("attention.sliding_window")
        return None if window is None else int(window)


@dataclasses.dataclass(frozen=True)
class GGUFNames:
    """What a family's GGUF files look like.

    architectures: GGUF ``general.architecture`` -> the HF ``model_type`` this family gives such a file.
    named: a word that ``general.name`` / ``general.basename`` must contain for the family to claim the file (a
    family that llama.cpp converts under another family's architecture, as Mistral under ``llama``); None: every
    file of its architectures that no named family claims.
    config: ``fn(file: GGUFFile, cfg: dict)`` adds the family's HF config keys to the shared ones (it may set
    ``rope_scaling``).
    block_names: llama.cpp's per-block tensor name (``attn_q`` of ``blk.{bid}.attn_q``) -> HF suffix inside
    ``model.layers.N.``.
    head_dim_keys: metadata keys read for ``head_dim``, first present wins (else hidden / heads).
    permuted_qk: llama.cpp's converter permutes the q/k rows (``LlamaModel.permute``), to be undone.
    norm_offset: the converter stores each RMSNorm weight as ``norm_offset + w`` (Gemma: 1).
    """

    architectures: dict[str, str]
    config: Callable[[GGUFFile, dict], None]
    named: str | None = None
    block_names: dict[str, str] = dataclasses.field(default_factory=lambda: BLOCK_NAMES)
    head_dim_keys: tuple[str, ...] = ("attention.key_length",)
    permuted_qk: bool = False
    norm_offset: float = 0.0
