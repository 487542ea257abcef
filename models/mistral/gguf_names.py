"""Mistral's GGUF files: llama.cpp converts Mistral checkpoints with the ``llama`` architecture, so such a file is
recognised by its name (``general.name`` or ``general.basename`` containing "mistral"), as transformers' GGUF
loader renames ``llama`` to ``mistral`` by the name too."""

from __future__ import annotations

from optima_jax.models.gguf_names import GGUFFile, GGUFNames
from optima_jax.models.llama import gguf_names as llama


def gguf_config(f: GGUFFile, cfg: dict) -> None:
    """LLaMA's keys, then Mistral's: no biases (bias tensors are then named unexpected), and the window the file
    sets, else none (llama.cpp runs a llama-architecture file without a window unless the file sets one)."""
    llama.gguf_config(f, cfg)
    cfg.update(sliding_window=f.window(), architectures=["MistralForCausalLM"])
    del cfg["attention_bias"], cfg["mlp_bias"]


GGUF = GGUFNames(architectures={"llama": "mistral"}, config=gguf_config, named="mistral", **llama.LLAMA_ARCH)
