"""The final pruned checkpoint (``checkpoint/``: Orbax params and masks, metadata, tokenizer) and its restore."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from optima_jax import models, sharding
from optima_jax.checkpoint.run_dir import MARKER
from optima_jax.checkpoint.storage import LibraryStderr, ensure_free_space, nbytes, orbax, savable, write_error
from optima_jax.checkpoint.trees import flatten, nest
from optima_jax.errors import OptimaError
from optima_jax.fileio import atomic_write_text, swap_in
from optima_jax.progress import steps

log = logging.getLogger("optima_jax.checkpoint")


def save_pruned(
    out: Path, params: dict[str, np.ndarray], masks: dict[str, np.ndarray], metadata: dict, write_extra=None
):
    """Write the final checkpoint to out/checkpoint, atomically, and then the completion marker.

    Everything is written to out/checkpoint.partial first (`write_extra(dir)` may add files, e.g. the
    tokenizer); only when that is complete is it swapped in for any previous out/checkpoint. A failed write
    (e.g. a full disk) raises an OptimaError and leaves the previous checkpoint, its marker and the resume
    points untouched.

    Multi-process runs: every process calls this (Orbax writes collectively); process 0 alone prepares the
    directories, writes the JSON files and swaps. Global jax.Arrays are passed to Orbax as they are.
    """

    ocp = orbax()
    out = Path(out).absolute()
    ck, staging = out / "checkpoint", out / "checkpoint.partial"
    main = sharding.is_main_process()
    ensure_free_space(out, nbytes([params, masks]), "the final checkpoint")

    names = ["params"] + (["masks"] if masks else []) + ["metadata"] + (["extra files"] if write_extra else [])
    try:
        with steps(f"saving the checkpoint ({nbytes([params, masks]) / 2**30:.2f} GiB)", names, enabled=main) as bar:
            if main:
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
            sharding.sync("optima_jax:save_pruned:mkdir")
            with LibraryStderr():
                with ocp.StandardCheckpointer() as c:
                    c.save(staging / "params", nest({k: savable(v) for k, v in params.items()}))
                bar.done("params")
                if masks:
                    with ocp.StandardCheckpointer() as c:
                        c.save(staging / "masks", nest({k: savable(v) for k, v in masks.items()}))
                    bar.done("masks")
            if main:
                atomic_write_text(staging / "metadata.json", json.dumps(metadata, indent=1, default=str))
                bar.done("metadata")
                if write_extra is not None:
                    write_extra(staging)
                    bar.done("extra files")
    except Exception as e:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        raise write_error(ck, e) from e
    if main:
        marker = out / MARKER
        # From the marker's removal until the new marker, the directory counts as "not finished".
        swap_in(staging, ck, before_swap=lambda: marker.unlink(missing_ok=True))
        atomic_write_text(marker, json.dumps({"format": "optima_jax/1", "checkpoint": "checkpoint"}))
    sharding.sync("optima_jax:save_pruned:done")


def is_pruned_checkpoint(path) -> bool:
    return (Path(path) / MARKER).exists()


def restore_params(path) -> dict:
    """The pruned params as the nested Flax params pytree (HF names split on '.'); numpy arrays."""
    path = Path(path).absolute()
    if not is_pruned_checkpoint(path):
        raise OptimaError(f"{path} is not a finished optima_jax checkpoint (no {MARKER})")
    with orbax().StandardCheckpointer() as c:
        return c.restore(path / "checkpoint" / "params")


def restore_masks(path) -> dict[str, np.ndarray]:
    path = Path(path).absolute()
    if not (path / "checkpoint" / "masks").exists():
        return {}
    with orbax().StandardCheckpointer() as c:
        return flatten(c.restore(path / "checkpoint" / "masks"))


def restore_metadata(path) -> dict:
    return json.loads((Path(path) / "checkpoint" / "metadata.json").read_text())


def restore_pruned(path):
    """-> (models.ModelConfig, flat params dict, tokenizer) of a finished run, ready for models.build_model."""

    meta = restore_metadata(path)
    params = flatten(restore_params(path))
    config = models.config_from_hf(meta["hf_config"])
    tok_dir = Path(path) / "checkpoint" / "tokenizer"
    tokenizer = None
    if tok_dir.exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    return config, params, tokenizer
