"""HF export: config.json + (sharded) model.safetensors + tokenizer files, loadable by transformers."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from safetensors.numpy import save_file

from optima_jax.models.build import validate_params
from optima_jax.models.config import ModelConfig
from optima_jax.models.gemma.modeling import text_hf_config
from optima_jax.fileio import swap_in
from optima_jax.progress import bar


def _dtype_name(arr: np.ndarray) -> str:
    return {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}.get(arr.dtype.name, "float32")


def save_hf(
    directory: str, config: ModelConfig, params: dict, tokenizer=None, max_shard_bytes: int = 5 * 1024**3
) -> None:
    """Write an HF checkpoint of the text model to ``directory``.

    params: flat HF-named dict (numpy or jax arrays, HF layout). Shards into ``model-0000k-of-0000n.safetensors``
    with ``model.safetensors.index.json`` when the total exceeds ``max_shard_bytes``. Written to
    ``<directory>.partial`` and renamed into place when complete: a failed write (e.g. a full disk) leaves any
    previous export at ``directory`` untouched and no half-written one.
    """
    validate_params(config, params, where=directory)
    final = os.path.abspath(directory)
    staging = final.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_hf(staging, config, params, tokenizer, max_shard_bytes)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, final)


def _write_hf(directory: str, config: ModelConfig, params: dict, tokenizer, max_shard_bytes: int) -> None:
    os.makedirs(directory)
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in params.items()}
    hf = text_hf_config(config)
    first = next(iter(arrays.values()))
    hf["torch_dtype"] = _dtype_name(first)
    if "dtype" in hf:
        hf["dtype"] = hf["torch_dtype"]
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for k, v in arrays.items():
        if shards[-1] and size + v.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    meta = {"format": "pt"}
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{j:05d}-of-{n:05d}.safetensors" for j in range(1, n + 1)]
    written = bar(
        desc=f"HF export to {os.path.basename(directory.rstrip('/'))}",
        unit="B",
        unit_scale=True,
        total=sum(v.nbytes for v in arrays.values()),
    )
    weight_map = {}
    with written:
        for fn, shard in zip(names, shards):
            save_file(shard, os.path.join(directory, fn), metadata=meta)
            weight_map.update({k: fn for k in shard})
            written.update(sum(v.nbytes for v in shard.values()))
    if n > 1:
        total = sum(v.nbytes for v in arrays.values())
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
