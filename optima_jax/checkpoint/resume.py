"""Per-block resume points of a run (``progress/``), written and read through Orbax CheckpointManagers."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optima_jax import sharding
from optima_jax.checkpoint.storage import LibraryStderr, ensure_free_space, nbytes, orbax, savable, write_error
from optima_jax.engine import Hidden

log = logging.getLogger("optima_jax.checkpoint")


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
        ocp = orbax()
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
        size = nbytes([weights, masks]) + sum(
            nbytes(getattr(h, "batches", h)) for h in (hidden, hidden_val) if h is not None
        )
        ensure_free_space(self.root, size, f"block {index}'s resume point")
        try:
            with LibraryStderr():
                self._save_block(index, weights, masks, rows, hidden, hidden_val)
        except Exception as e:
            raise write_error(self.root / f"blocks/{index}", e) from e

    def _save_block(self, index, weights, masks, rows, hidden, hidden_val):
        ocp = orbax()
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
                front[key], meta["valid"][key] = {"00000": savable(h)}, [int(h.shape[0])]
            meta["shapes"][key] = [list(map(int, b.shape)) for _, b in sorted(front[key].items())]
            meta["dtype"][key] = str(next(iter(front[key].values())).dtype)
        self.frontier.save(
            index + 1,
            args=ocp.args.Composite(state=ocp.args.StandardSave(front), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self.frontier.wait_until_finished()

    def _restore_block(self, i: int):
        ocp = orbax()
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

        ocp = orbax()

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
