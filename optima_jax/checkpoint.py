"""Orbax checkpoints: per-block resume points during a run, and the final pruned checkpoint.

Layout of a run's output directory:
  run.json                   the run's identity (config fingerprint); a different run refuses to write here
  progress/blocks/<i>/       CheckpointManager step i: block i's pruned linears, masks and report rows
  progress/frontier/<i>/     CheckpointManager step i: hidden states entering block i (last two kept)
  checkpoint/params/         the final pruned params, nested dict of HF names split on "." (Orbax)
  checkpoint/masks/          keep masks of every pruned linear (Orbax, bool)
  checkpoint/metadata.json   config, per-linear stats, library versions
  optima_checkpoint.json     marker written last: the directory holds a complete pruned checkpoint
  eval_dense.json            the dense model's perplexity and the eval settings it was measured with
  report.json, report.csv, report.png

overwrite=True replaces another optima_jax run's directory; a non-empty directory holding no run (no
run.json or marker) is never cleared.

Restore a finished run as the Flax params pytree:  params = optima_jax.checkpoint.restore_params(dir)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from optima_jax.errors import OptimaError
from optima_jax.fileio import atomic_write_text

log = logging.getLogger("optima_jax.checkpoint")

MARKER = "optima_checkpoint.json"
RUN_FILE = "run.json"


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


# ----------------------------------------------------------------------------- pytrees


def nest(flat: dict[str, object]) -> dict:
    """{"model.layers.0.mlp.up_proj.weight": a} -> {"model": {"layers": {"0": {"mlp": {...}}}}}."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """Inverse of `nest`."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, name))
        else:
            out[name] = v
    return out


# ----------------------------------------------------------------------------- run identity


def run_fingerprint(cfg_dict: dict) -> str:
    """Hash of everything that determines the pruned weights (not output paths or eval settings)."""
    ignore = {"output_dir", "overwrite", "export_hf", "eval", "distributed", "hidden_states_on"}
    core = {k: v for k, v in cfg_dict.items() if k not in ignore}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _run_identity(out: Path) -> tuple[bool, str | None]:
    """-> (whether `out` holds an optima_jax run, its fingerprint if known).

    A run is recognised by its run.json (a JSON object with a "fingerprint") or by the finished-checkpoint
    marker (a JSON object whose "format" starts with "optima_jax/"). Files merely named like them are not.
    """
    run = _read_json(out / RUN_FILE) if (out / RUN_FILE).is_file() else None
    if isinstance(run, dict) and "fingerprint" in run:
        return True, str(run["fingerprint"])
    marker = _read_json(out / MARKER) if (out / MARKER).is_file() else None
    if isinstance(marker, dict) and str(marker.get("format", "")).startswith("optima_jax/"):
        return True, None
    return False, None


def _output_dir_action(out: Path, fingerprint: str, overwrite: bool) -> str:
    """What claiming `out` for the run `fingerprint` does: "create" (absent or empty), "resume" (this run's
    directory) or "replace" (another optima_jax run's directory, overwrite=True). Anything else is an
    OptimaError, before anything is written or removed: a path that is a file (or under one), another run's
    directory without overwrite, or a non-empty directory that holds no optima_jax run (never cleared, not
    even with overwrite=True: it may be the current directory or $HOME)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OptimaError(f"output_dir {out} is an existing file, not a directory; choose another --config.output_dir")
    if not out.exists():
        parent = out.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise OptimaError(f"output_dir {out} cannot be created: {parent} is a file, not a directory")
        return "create"
    is_run, other = _run_identity(out)
    if is_run:
        if other == fingerprint:
            return "resume"
        if overwrite:
            return "replace"
        what = f"fingerprint {other} != {fingerprint}" if other else f"a finished checkpoint without {RUN_FILE}"
        raise OptimaError(
            f"output directory {out} holds a different run's checkpoint ({what}); "
            "set --config.overwrite=True to replace it"
        )
    if any(out.iterdir()):
        raise OptimaError(
            f"output directory {out} is not empty and holds no optima_jax run (no {RUN_FILE} or "
            f"{MARKER}); it is never cleared, even with --config.overwrite=True: choose an empty or "
            "new --config.output_dir"
        )
    return "create"


def check_output_dir(out: Path, fingerprint: str, overwrite: bool) -> None:
    """Refuse (before any work) an output directory that `claim_output_dir` would refuse."""
    _output_dir_action(out, fingerprint, overwrite)


def _clear_dir(out: Path) -> None:
    """Remove everything inside `out` (kept itself: it may be a mount point or a symlink)."""
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def claim_output_dir(out: Path, fingerprint: str, overwrite: bool, cfg_dict: dict) -> bool:
    """Make `out` this run's directory. Returns True if it already holds this run (resume possible).

    A directory holding a different optima_jax run is refused unless overwrite=True, in which case it is
    cleared; a non-empty directory holding no optima_jax run is always refused. Nothing is written or removed
    when the directory is refused.
    """
    out = Path(out)
    action = _output_dir_action(out, fingerprint, overwrite)
    if action == "resume":
        return True
    if action == "replace":
        log.info("overwrite=True: clearing the previous run in %s", out)
        _clear_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / RUN_FILE, json.dumps({"fingerprint": fingerprint, "config": cfg_dict}, indent=1, default=str)
    )
    return False


def has_progress(out: Path, fingerprint: str | None = None) -> bool:
    """Whether `out` holds an optima_jax run (this `fingerprint`'s, if given) that a rerun would resume: at
    least one finished block's resume point, or a finished checkpoint."""
    try:
        out = Path(out)
        is_run, other = _run_identity(out)
        if not is_run or (fingerprint is not None and other != fingerprint):
            return False
        if (out / MARKER).is_file():
            return True
        frontier = out / "progress" / "frontier"  # step i+1 is written once block i is done
        return frontier.is_dir() and any(p.name.isdigit() and int(p.name) > 0 for p in frontier.iterdir())
    except OSError:
        return False


# ----------------------------------------------------------------------------- progress (resume)


class Progress:
    """Per-block resume points, written through two Orbax CheckpointManagers.

    After block i: `blocks` step i (block i's pruned weights, masks, report rows), then `frontier` step i+1
    (hidden states entering block i+1, as the engine's micro-batches, plus how many rows of each are real).
    Each save is atomic (Orbax commits a step by renaming its temporary directory). On restart, `latest()`
    finds the last frontier whose blocks are all intact; a step that fails to restore is dropped and its
    block is redone.

    Multi-process runs: every process calls save/restore (Orbax coordinates; the directory must be on a
    filesystem all hosts share). Weights and masks are identical numpy arrays on every process; hidden
    states are global jax.Arrays, each host writing and reading only its own rows.
    """

    def __init__(self, out: Path):
        ocp = _ocp()
        root = self.root = Path(out).absolute() / "progress"
        opts = dict(create=True, enable_async_checkpointing=False)
        self.blocks = ocp.CheckpointManager(root / "blocks", options=ocp.CheckpointManagerOptions(**opts))
        self.frontier = ocp.CheckpointManager(
            root / "frontier", options=ocp.CheckpointManagerOptions(max_to_keep=2, **opts)
        )

    def save_block(
        self,
        index: int,
        weights: dict[str, np.ndarray],
        masks: dict[str, np.ndarray],
        rows: list[dict],
        hidden,
        hidden_val,
    ):
        """hidden/hidden_val: engine.Hidden (or an array [n, T, D]) entering block index+1."""
        size = _nbytes([weights, masks]) + sum(
            _nbytes(getattr(h, "batches", h)) for h in (hidden, hidden_val) if h is not None
        )
        ensure_free_space(self.root, size, f"block {index}'s resume point")
        try:
            with _LibraryStderr():
                self._save_block(index, weights, masks, rows, hidden, hidden_val)
        except Exception as e:
            raise _write_error(self.root / f"blocks/{index}", e) from e

    def _save_block(self, index, weights, masks, rows, hidden, hidden_val):
        ocp = _ocp()
        # A step redone after an unreadable resume point replaces the old one.
        if index in self.blocks.all_steps():
            self.blocks.delete(index)
        if index + 1 in self.frontier.all_steps():
            self.frontier.delete(index + 1)
        self.blocks.save(
            index,
            args=ocp.args.Composite(
                weights=ocp.args.StandardSave({k: np.asarray(v) for k, v in weights.items()}),
                masks=ocp.args.StandardSave({k: np.asarray(v) for k, v in masks.items()}),
                rows=ocp.args.JsonSave({"rows": rows}),
            ),
            force=True,
        )
        self.blocks.wait_until_finished()
        front, meta = {}, {"valid": {}, "shapes": {}, "dtype": {}}
        for key, h in (("hidden", hidden), ("hidden_val", hidden_val)):
            if h is None:
                continue
            if hasattr(h, "tree"):
                front[key], meta["valid"][key] = h.tree(), [int(v) for v in h.valid]
            else:
                front[key], meta["valid"][key] = {"00000": _savable(h)}, [int(h.shape[0])]
            meta["shapes"][key] = [list(map(int, b.shape)) for _, b in sorted(front[key].items())]
            meta["dtype"][key] = str(next(iter(front[key].values())).dtype)
        self.frontier.save(
            index + 1,
            args=ocp.args.Composite(state=ocp.args.StandardSave(front), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self.frontier.wait_until_finished()

    def _restore_block(self, i: int):
        ocp = _ocp()
        r = self.blocks.restore(
            i,
            args=ocp.args.Composite(
                weights=ocp.args.StandardRestore(), masks=ocp.args.StandardRestore(), rows=ocp.args.JsonRestore()
            ),
        )
        return r["weights"], r["masks"], r["rows"]["rows"]

    def _restore_frontier(self, step: int, mesh):
        """-> (hidden, hidden_val) as engine.Hidden. With a data mesh in a multi-process run the micro-batches
        come back as global arrays split over "data" (each host reads its rows); otherwise as numpy."""
        import jax
        from jax.sharding import NamedSharding, PartitionSpec as P

        from optima_jax import sharding
        from optima_jax.engine import Hidden

        ocp = _ocp()
        import jax.numpy as jnp

        meta = self.frontier.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        global_arrays = mesh is not None and sharding.is_multiprocess()
        n = sharding.data_size(mesh)

        def target(shape, dtype):
            shape, dtype = tuple(shape), jnp.dtype(dtype)
            if not global_arrays:
                return np.empty(shape, dtype)
            spec = P("data") if shape and shape[0] % n == 0 else P()
            return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))

        abstract = {
            key: {f"{k:05d}": target(shape, meta["dtype"][key]) for k, shape in enumerate(shapes)}
            for key, shapes in meta["shapes"].items()
        }
        state = self.frontier.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
        out = [Hidden.from_tree(state[k], meta["valid"][k]) if k in state else None for k in ("hidden", "hidden_val")]
        return out[0], out[1]

    def latest(self, mesh=None):
        """-> (next_block, hidden, hidden_val, blocks: list of (weights, masks, rows)) or None.

        hidden/hidden_val are engine.Hidden (hidden_val None if the run has no validation set); `mesh` is the
        data mesh, needed to restore a multi-process run's global hidden states.
        """
        for step in sorted(self.frontier.all_steps(), reverse=True):
            try:
                hidden, hidden_val = self._restore_frontier(step, mesh)
                blocks = [self._restore_block(i) for i in range(step)]
            except Exception as e:  # corrupted or truncated step: fall back to the previous resume point
                log.warning(
                    "resume point %d is unreadable (%s: %s); redoing from an earlier block",
                    step,
                    type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "",
                )
                continue
            return step, hidden, hidden_val, blocks
        return None

    def close(self):
        self.blocks.close()
        self.frontier.close()


def _savable(x):
    """numpy for process-local values; global jax.Arrays as they are (Orbax writes each host's shards)."""
    import jax

    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x
    return np.asarray(x)


# ----------------------------------------------------------------------------- final checkpoint


def _write_error(path, e: Exception) -> OptimaError:
    """One-line error for a failed checkpoint write (a full disk, a quota, a lost mount...)."""
    import re

    text = str(e).strip()
    code = re.search(r"os_error_code='?(\d+)", text)  # TensorStore (Orbax) wraps the OS error in its message
    if isinstance(e, OSError) and e.strerror:
        msg = e.strerror + (f": {e.filename}" if e.filename else "")
    elif code:
        msg = f"{os.strerror(int(code.group(1)))} (errno {code.group(1)})"
    else:
        msg = text.splitlines()[0][:300] if text else type(e).__name__
    return OptimaError(
        f"could not write {path}: {msg}; the earlier checkpoints in {Path(path).parent} are "
        "intact, free space and rerun the same command to resume"
    )


class _LibraryStderr:
    """While Orbax writes, text that its worker threads print straight to stderr (TensorStore callbacks into
    an event loop that a failed write already closed print bare tracebacks) is held back. After a successful
    write it is passed on unchanged; after a failed one it goes to the log file (not the console), so the
    failure surfaces once, as the caller's one-line error."""

    def __init__(self):
        self.buf = io.StringIO()

    def __enter__(self):
        self.real = sys.stderr
        sys.stderr = self.buf
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            time.sleep(0.5)  # let the writer threads finish printing
        sys.stderr = self.real
        text = self.buf.getvalue()
        if exc_type is None:
            self.real.write(text)
        elif text.strip():
            log.debug("library output during the failed write:\n%s", text)
        return False


def _nbytes(tree) -> int:
    import jax

    return int(sum(getattr(x, "nbytes", 0) for x in jax.tree_util.tree_leaves(tree)))


def ensure_free_space(path: Path, nbytes: int, what: str) -> None:
    """Refuse a write of about `nbytes` (+5% and 64 KiB for metadata) that cannot fit on `path`'s filesystem,
    before anything is written: a full disk mid-write is still handled, but this avoids it. Every process of
    a multi-process run must call it (process 0's answer is broadcast)."""
    from optima_jax import sharding

    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    free = shutil.disk_usage(p).free
    need = int(nbytes * 1.05) + (64 << 10)
    # Multi-process runs write one shared directory: process 0 decides for all, so all stop together.
    free, need = sharding.broadcast_from_main((int(free), int(need)))
    if free < need:
        raise OptimaError(
            f"not enough free space for {what} in {path}: about {need / 2**20:.1f} MiB needed, "
            f"{free / 2**20:.1f} MiB free; the earlier checkpoints are intact, free space and rerun "
            "the same command to resume"
        )


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
    from optima_jax import sharding

    ocp = _ocp()
    out = Path(out).absolute()
    ck, staging = out / "checkpoint", out / "checkpoint.partial"
    main = sharding.is_main_process()
    ensure_free_space(out, _nbytes([params, masks]), "the final checkpoint")
    from optima_jax.progress import steps

    names = ["params"] + (["masks"] if masks else []) + ["metadata"] + (["extra files"] if write_extra else [])
    try:
        with steps(f"saving the checkpoint ({_nbytes([params, masks]) / 2**30:.2f} GiB)", names, enabled=main) as bar:
            if main:
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
            sharding.sync("optima_jax:save_pruned:mkdir")
            with _LibraryStderr():
                with ocp.StandardCheckpointer() as c:
                    c.save(staging / "params", nest({k: _savable(v) for k, v in params.items()}))
                bar.done("params")
                if masks:
                    with ocp.StandardCheckpointer() as c:
                        c.save(staging / "masks", nest({k: _savable(v) for k, v in masks.items()}))
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
        raise _write_error(ck, e) from e
    if main:
        from optima_jax.models.loading.export import swap_in

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
    with _ocp().StandardCheckpointer() as c:
        return c.restore(path / "checkpoint" / "params")


def restore_masks(path) -> dict[str, np.ndarray]:
    path = Path(path).absolute()
    if not (path / "checkpoint" / "masks").exists():
        return {}
    with _ocp().StandardCheckpointer() as c:
        return flatten(c.restore(path / "checkpoint" / "masks"))


def restore_metadata(path) -> dict:
    return json.loads((Path(path) / "checkpoint" / "metadata.json").read_text())


def restore_pruned(path):
    """-> (models.ModelConfig, flat params dict, tokenizer) of a finished run, ready for models.build_model."""
    from optima_jax import models

    meta = restore_metadata(path)
    params = flatten(restore_params(path))
    config = models.config_from_hf(meta["hf_config"])
    tok_dir = Path(path) / "checkpoint" / "tokenizer"
    tokenizer = None
    if tok_dir.exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    return config, params, tokenizer
