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

from optima_jax.checkpoint.final import (
    is_pruned_checkpoint,
    restore_masks,
    restore_metadata,
    restore_params,
    restore_pruned,
    save_pruned,
)
from optima_jax.checkpoint.resume import Progress
from optima_jax.checkpoint.run_dir import (
    MARKER,
    RUN_FILE,
    check_output_dir,
    claim_output_dir,
    has_progress,
    run_fingerprint,
)
from optima_jax.checkpoint.storage import ensure_free_space
from optima_jax.checkpoint.trees import flatten, nest

__all__ = [
    "MARKER",
    "RUN_FILE",
    "Progress",
    "check_output_dir",
    "claim_output_dir",
    "ensure_free_space",
    "flatten",
    "has_progress",
    "is_pruned_checkpoint",
    "nest",
    "restore_masks",
    "restore_metadata",
    "restore_params",
    "restore_pruned",
    "run_fingerprint",
    "save_pruned",
]
