"""Exports of a pruned model for serving: an HF directory (transformers, vLLM) and a checkpoint of DeepMind's
gemma library, written at the end of a run (``export_hf``, ``export_gemma``) or later from a finished run
directory (``python -m optima_jax.export``). Both carry the same ``sparsity`` summary.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
from pathlib import Path

import numpy as np


from optima_jax import models
from optima_jax.checkpoint.final import is_pruned_checkpoint, restore_masks, restore_metadata, restore_pruned
from optima_jax.checkpoint.run_dir import MARKER
from optima_jax.errors import OptimaError
from optima_jax.models.loading.gemma_ckpt import NO_SPM_NOTE, check_exportable
from optima_jax.sparsity import SparsitySpec

log = logging.getLogger("optima_jax.export")

SPM_FILE = "sentencepiece.model"  # in <run>/checkpoint/: the SentencePiece tokenizer, for the gemma library
GENERATION_FILE = "generation_config.json"  # in <run>/checkpoint/: the source model's, when it had one
TARGETS = ("hf", "gemma")


def sparsity_summary(metadata: dict) -> dict:
    """The ``sparsity`` block of an export, from a run's metadata: pattern, the measured share of zeros in the
    pruned linears, which block linears were pruned and which were left dense, and the method."""
    cfg = metadata.get("config", {})
    rows = metadata.get("linears", [])
    spec = SparsitySpec.parse(str(cfg.get("sparsity", "0.5")))
    pruned = sorted({r["linear"] for r in rows})
    weights = sum(r["out_features"] * r["in_features"] for r in rows)
    zeros = sum(r["sparsity"] * r["out_features"] * r["in_features"] for r in rows)
    all_linears = metadata.get("block_linears") or pruned
    return {
        "format": "optima_jax",
        "version": md.version("optima_jax"),
        "pattern": "unstructured" if spec.kind == "unstructured" else f"{spec.n}:{spec.m}",
        "target": str(cfg.get("sparsity")),
        "ratio": round(zeros / weights, 6) if weights else 0.0,
        "pruned_modules": pruned,
        "dense_modules": sorted(set(all_linears) - set(pruned)) + ["embeddings", "lm_head", "norms"],
        "method": f"{cfg.get('selector')}+{cfg.get('weight_update')}",
        "layers": len({r["block"] for r in rows}),
    }


def check_targets(config, export_gemma: bool) -> None:
    """Everything the requested exports need that can fail, checked before any work or write."""
    if export_gemma:
        check_exportable(config, where="export_gemma")


def write_exports(
    config, params: dict, tokenizer, metadata: dict, checkpoint_dir, *, hf_dir=None, gemma_dir=None
) -> None:
    """Write the requested exports (an HF directory to ``hf_dir``, a gemma-library checkpoint to ``gemma_dir``),
    each atomically (a failed write leaves any earlier export in place). ``checkpoint_dir``: the run's
    checkpoint/, for the source's generation config and the SentencePiece tokenizer it keeps."""
    ck = Path(checkpoint_dir)
    sparsity = sparsity_summary(metadata)
    if hf_dir is not None:
        gen = ck / GENERATION_FILE
        generation = json.loads(gen.read_text()) if gen.is_file() else None
        models.save_hf(hf_dir, config, params, tokenizer, sparsity=sparsity, generation_config=generation)
    if gemma_dir is not None:
        spm = ck / SPM_FILE
        if not spm.is_file():
            log.warning("gemma export: %s", NO_SPM_NOTE)
        models.save_gemma_lib(
            gemma_dir,
            config,
            params,
            tokenizer,
            spm_model=spm.read_bytes() if spm.is_file() else None,
            sparsity=sparsity,
        )


def export_run(run_dir, to: str, out=None) -> Path:
    """Export a finished run (``to``: hf | gemma) to ``out`` (default <run>/<to>); returns the directory.
    A model the target cannot express is a one-line error before anything is written."""
    if to not in TARGETS:
        raise OptimaError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    run = Path(run_dir).absolute()
    if not is_pruned_checkpoint(run):
        raise OptimaError(f"--run {run} is not a finished optima_jax run (no {MARKER}); finish or resume it first")
    config, flat, tokenizer = restore_pruned(run)
    if to == "gemma":
        check_exportable(config, where=str(run))
    masks = restore_masks(run)
    for name, keep in masks.items():  # the export carries exactly the run's zeros
        if name in flat and np.any(np.asarray(flat[name])[~np.asarray(keep, bool)] != 0):
            raise OptimaError(f"{run}: {name} has non-zero weights outside its mask; the checkpoint is damaged")
    target = Path(out).absolute() if out else run / to
    write_exports(
        config,
        flat,
        tokenizer,
        restore_metadata(run),
        run / "checkpoint",
        **{f"{to}_dir": target},
    )
    return target
