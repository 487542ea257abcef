"""Checkpoints of DeepMind's ``gemma`` library, both ways: ``save_gemma_lib`` writes one that
``gm.ckpts.load_params`` reads, and the ``gemma:`` model source reads one back to prune it.

An export directory (``save_gemma_lib``)::

    params/             Orbax params in the library's NESTED layout: gm.ckpts.load_params("<dir>/params")
    gemma_config.json   {"class": "Gemma3_270M" | "Transformer", "kwargs": {...}, "config": TransformerConfig
                        fields (enums by member name), "tokenizer": "tokenizer.model" | null, "sparsity": {...}}
    tokenizer.model     the SentencePiece model for gm.text.Gemma3Tokenizer (when the model came with one)
    tokenizer/          the HF tokenizer files (for reading the export back here)

Sources: ``gemma:<dir>`` (an export directory, or an Orbax params checkpoint of a named variant recognised by
its shapes) and ``gemma:<Variant>:<dir>`` (e.g. ``gemma:Gemma3_1B:/ckpts/gemma3-1b-it``) to name the variant.
The library's legacy FLAT layout (``transformer/layer_0/...``) reads too.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from optima_jax.fileio import swap_in
from optima_jax.models.config import ModelConfig
from optima_jax.models.errors import CheckpointError
from optima_jax.models.gemma.gemma_lib import (
    VARIANTS,
    GemmaLibError,
    flat_layout_to_nested,
    from_lib_params,
    hf_config_from_lib,
    lib_config,
    to_lib_params,
    variant_name,
)
from optima_jax.models.loading.hf_local import load_tokenizer
from optima_jax.models.registry import config_from_hf

PREFIX = "gemma:"
CONFIG_FILE = "gemma_config.json"
PARAMS_DIR = "params"
SPM_FILE = "tokenizer.model"
HF_TOKENIZER_DIR = "tokenizer"


NO_SPM_NOTE = (
    "the model came without a SentencePiece tokenizer.model: pass the model's own tokenizer.model to "
    "gm.text.Gemma3Tokenizer(path) (Gemma 2: Gemma2Tokenizer), or its default, which the library downloads"
)


def is_gemma_source(source: str) -> bool:
    return os.fspath(source).startswith(PREFIX)


def split_source(source: str) -> tuple[str | None, str]:
    """``gemma:[<Variant>:]<path>`` -> (variant or None, path)."""
    rest = os.fspath(source)[len(PREFIX) :]
    head, sep, tail = rest.partition(":")
    if sep and head in VARIANTS:
        return head, tail
    if sep and head and "/" not in head and not os.path.exists(rest):
        raise CheckpointError(f"{source}: unknown gemma library variant {head!r} (known: {', '.join(VARIANTS)})")
    return None, rest


def _orbax():
    import orbax.checkpoint as ocp

    return ocp


# ------------------------------------------------------------------------------------------------------ export
def check_exportable(cfg: ModelConfig, where: str = "export_gemma") -> dict:
    """The library config fields for this model, or a one-line GemmaLibError before anything is written."""
    return lib_config(cfg, where=where)


def save_gemma_lib(
    directory, cfg: ModelConfig, params: dict, tokenizer=None, spm_model: bytes | None = None, sparsity=None
) -> dict:
    """Write a gemma-library checkpoint of the text model to ``directory`` (layout in the module docstring).

    Written to ``<directory>.partial`` and swapped into place when complete, so a failed write leaves any
    previous export untouched. Returns the ``gemma_config.json`` dict.
    """
    fields = check_exportable(cfg, where=os.fspath(directory))
    name = variant_name(fields)
    meta = {
        "class": name or "Transformer",
        "kwargs": VARIANTS[name][1] if name else {},
        "config": fields,
        "tokenizer": SPM_FILE if spm_model else None,
        "tokenizer_note": None if spm_model else NO_SPM_NOTE,
        "sparsity": sparsity,
        "load": "params = gm.ckpts.load_params('<this dir>/params'); model = gm.nn.<class>(**kwargs) "
        "(class 'Transformer': gm.nn.Transformer(config=gm.nn.config.TransformerConfig(**config)))",
    }
    tree = to_lib_params(params, cfg, fields)
    final = Path(directory).absolute()
    staging = Path(str(final).rstrip("/") + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        with _orbax().StandardCheckpointer() as c:
            c.save(staging / PARAMS_DIR, tree)
        (staging / CONFIG_FILE).write_text(json.dumps(meta, indent=1))
        if spm_model:
            (staging / SPM_FILE).write_bytes(spm_model)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging / HF_TOKENIZER_DIR))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(str(staging), str(final))
    return meta


# ------------------------------------------------------------------------------------------------------ import
def _restore(path: Path, where: str) -> dict:
    ocp = _orbax()
    try:
        with ocp.StandardCheckpointer() as c:
            meta = c.metadata(path)
            tree = getattr(meta, "item_metadata", None)
            tree = getattr(tree, "tree", tree)
            if tree is None:
                raise CheckpointError(f"{where}: no Orbax item metadata in {path}")
            target = _numpy_targets(tree)
            return c.restore(path, target)
    except (CheckpointError, GemmaLibError):
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{where}: cannot read the Orbax checkpoint {path}: {msg}") from None


def _numpy_targets(tree):
    """Restore every leaf as a host numpy array of its stored shape and dtype (no device placement)."""
    if isinstance(tree, dict):
        return {k: _numpy_targets(v) for k, v in tree.items()}
    return np.empty(tuple(tree.shape), dtype=tree.dtype)


def _shape(tree: dict, path: str):
    node = tree
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return tuple(getattr(node, "shape", ()))


def infer_variant(tree: dict, where: str) -> str:
    """The named variant whose layer count and embedding shape match a params tree's, else a one-line error."""
    tree = flat_layout_to_nested(tree)
    emb = _shape(tree, "embedder/input_embedding")
    if emb is None:
        raise CheckpointError(f"{where}: not a gemma library params checkpoint (no embedder/input_embedding)")
    n_layers = sum(1 for k in tree if isinstance(k, str) and k.startswith("layer_"))
    for name, (fields, _) in VARIANTS.items():
        if (fields["num_embed"], fields["embed_dim"]) == emb and len(fields["attention_types"]) == n_layers:
            return name
    raise CheckpointError(
        f"{where}: {n_layers} layers with embedding {emb} match no known variant ({', '.join(VARIANTS)}); "
        f"read it from an export directory with {CONFIG_FILE} or name the variant as gemma:<Variant>:<path>"
    )


def _tokenizer(root: Path):
    """The HF tokenizer of an export (tokenizer/), else one built from a SentencePiece tokenizer.model here or in
    the parent directory (the layout of the library's released checkpoints), else None."""
    if (root / HF_TOKENIZER_DIR).is_dir():
        return load_tokenizer(str(root / HF_TOKENIZER_DIR))
    for spm in (root / SPM_FILE, root.parent / SPM_FILE):
        if spm.is_file():
            from transformers import GemmaTokenizerFast

            try:
                return GemmaTokenizerFast(vocab_file=str(spm))
            except Exception as e:
                raise CheckpointError(f"{spm}: cannot load the SentencePiece tokenizer: {e}".replace("\n", " "))
    return None


def load_gemma_lib(source: str):
    """``gemma:[<Variant>:]<dir>`` -> (ModelConfig, flat HF-named float params, tokenizer or None)."""
    variant, path = split_source(source)
    root = Path(path).expanduser().absolute()  # Orbax refuses relative paths
    if not root.exists():
        raise CheckpointError(f"{source}: {root} does not exist")
    if (root / CONFIG_FILE).is_file():
        try:
            meta = json.loads((root / CONFIG_FILE).read_text())
            fields = meta["config"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{root / CONFIG_FILE}: not a gemma export config ({e})") from None
        ckpt = root / PARAMS_DIR
        tree = _restore(ckpt, source)
    else:
        ckpt = root
        tree = _restore(ckpt, source)
        variant = variant or infer_variant(tree, source)
        fields = VARIANTS[variant][0]
    hf = hf_config_from_lib(fields, where=source)
    cfg = config_from_hf(hf, where=source)
    params = from_lib_params(tree, cfg, fields, where=source)
    return cfg, params, _tokenizer(root)
