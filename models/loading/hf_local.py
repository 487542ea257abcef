"""Read a local HF model directory: config.json + single or sharded safetensors, tensor by tensor."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors import safe_open

from optima_jax.models.config import ModelConfig
from optima_jax.models.errors import CheckpointError, ParamsError
from optima_jax.models.registry import config_from_hf, params_module

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "added_tokens.json",
    "chat_template.jinja",
)


def read_config(directory: str) -> tuple[dict, ModelConfig]:
    """(HF config dict, ModelConfig) from ``directory/config.json``; clear errors naming the path."""
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: model directory does not exist")
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: config.json is missing")
    try:
        with open(path) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    return d, config_from_hf(d, where=path)


def safetensors_files(directory: str) -> list[str]:
    """The checkpoint's safetensors files: from ``model.safetensors.index.json`` if present, else *.safetensors."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e!r})") from None
        files = sorted(set(weight_map.values()))
        for fn in files:
            if not os.path.isfile(os.path.join(directory, fn)):
                raise CheckpointError(f"{os.path.join(directory, fn)}: shard listed in {index} is missing")
        return [os.path.join(directory, fn) for fn in files]
    files = sorted(fn for fn in os.listdir(directory) if fn.endswith(".safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors files (and no model.safetensors.index.json)")
    return [os.path.join(directory, fn) for fn in files]


def read_params(directory: str, cfg: ModelConfig, dtype=np.float32, strict: bool = True) -> dict[str, np.ndarray]:
    """Flat HF-named dict of numpy arrays in ``dtype``, read one tensor at a time and validated against ``cfg``.

    Tensor names go through the family's ``canonical_name`` (e.g. Gemma 3 multimodal prefixes). Missing tensors
    and shape mismatches are errors; unexpected tensors are errors when ``strict``.
    """
    fam = params_module(cfg)
    expected = fam.expected_shapes(cfg)
    dtype = np.dtype(dtype)
    params: dict[str, np.ndarray] = {}
    unexpected: list[str] = []
    for path in safetensors_files(directory):
        try:
            f = safe_open(path, framework="np")
        except Exception as e:  # safetensors raises its own error type for corrupt/truncated files
            raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): {e}") from None
        with f:
            for key in f.keys():
                name = fam.canonical_name(key, cfg)
                if name is None:
                    continue
                if name not in expected:
                    unexpected.append(key)
                    continue
                shape = tuple(f.get_slice(key).get_shape())
                if shape != tuple(expected[name]):
                    raise ParamsError(
                        f"{path}: tensor {key} has shape {shape}, expected {tuple(expected[name])} from config.json"
                    )
                try:
                    arr = f.get_tensor(key)
                except Exception as e:
                    raise CheckpointError(f"{path}: cannot read tensor {key} (truncated or corrupt?): {e}") from None
                params[name] = arr.astype(dtype, copy=False)
                del arr
    missing = [k for k in expected if k not in params]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ParamsError(f"{directory}: missing tensors {', '.join(missing[:3])}{more}")
    if unexpected and strict:
        more = f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else ""
        raise ParamsError(
            f"{directory}: unexpected tensors {', '.join(unexpected[:3])}{more} "
            f"for model_type {cfg.hf_config.get('model_type')!r}"
        )
    return params


def load_tokenizer(directory: str):
    """transformers AutoTokenizer for the directory, or None when it holds no tokenizer files."""
    if not any(
        os.path.isfile(os.path.join(directory, f))
        for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
    ):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory)
    except Exception as e:
        raise CheckpointError(f"{directory}: cannot load the tokenizer: {e}".replace("\n", " ")) from None
