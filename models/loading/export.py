"""HF export: config.json + generation_config.json + (sharded) model.safetensors + tokenizer files (with the
chat template), loadable by transformers and serving engines (vLLM) as they are.

config.json is written through transformers' config class for the model type, so it is normalised for the
installed version; an optional ``sparsity`` block (pattern, ratio, which modules were left dense) is an extra
key that loaders ignore.
"""

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


# Chat end-of-turn markers: a generation config also stops on whichever of these the tokenizer has as a token.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>")


def save_hf(
    directory: str,
    config: ModelConfig,
    params: dict,
    tokenizer=None,
    max_shard_bytes: int = 5 * 1024**3,
    sparsity: dict | None = None,
    generation_config: dict | None = None,
) -> None:
    """Write an HF checkpoint of the text model to ``directory``.

    params: flat HF-named dict (numpy or jax arrays, HF layout). Shards into ``model-0000k-of-0000n.safetensors``
    with ``model.safetensors.index.json`` when the total exceeds ``max_shard_bytes``. Written to
    ``<directory>.partial`` and renamed into place when complete: a failed write (e.g. a full disk) leaves any
    previous export at ``directory`` untouched and no half-written one.

    generation_config: the source model's generation config (copied); None builds one from the config's
    bos/eos/pad ids plus the tokenizer's end-of-turn marker (``END_OF_TURN_TOKENS``).
    """
    validate_params(config, params, where=directory)
    final = os.path.abspath(directory)
    staging = final.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_hf(staging, config, params, tokenizer, max_shard_bytes, sparsity, generation_config)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, final)


def hf_config_json(config: ModelConfig, dtype_name: str, sparsity: dict | None = None) -> dict:
    """config.json of the text model, normalised by transformers' config class for its model_type (the stored
    dict as it is when the installed transformers does not know the type)."""
    hf = text_hf_config(config)
    hf.pop("torch_dtype", None)
    hf["dtype"] = dtype_name
    try:
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        obj = AutoConfig.for_model(hf["model_type"], **{k: v for k, v in hf.items() if k != "model_type"})
        if not getattr(obj, "architectures", None) and hf["model_type"] in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            obj.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[hf["model_type"]]]
        out = obj.to_diff_dict()  # what save_pretrained writes
    except (ImportError, ValueError, KeyError):
        out = hf
    if sparsity is not None:
        out["sparsity"] = sparsity
    return out


def generation_config_json(config: ModelConfig, tokenizer) -> dict:
    """A generation config from the model's special ids and the tokenizer's end-of-turn marker."""
    hf = text_hf_config(config)
    eos = hf.get("eos_token_id")
    eos = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        eos += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and vocab[t] not in eos]
        if not eos and tokenizer.eos_token_id is not None:
            eos = [tokenizer.eos_token_id]
    out = {k: hf[k] for k in ("bos_token_id", "pad_token_id") if hf.get(k) is not None}
    if eos:
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    return out


def _write_hf(
    directory: str, config: ModelConfig, params: dict, tokenizer, max_shard_bytes: int, sparsity, generation
) -> None:
    os.makedirs(directory)
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in params.items()}
    first = next(iter(arrays.values()))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config_json(config, _dtype_name(first), sparsity), f, indent=2, sort_keys=True)
    gen = dict(generation) if generation else generation_config_json(config, tokenizer)
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2, sort_keys=True)
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
