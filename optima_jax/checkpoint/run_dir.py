"""Run-directory ownership: a run's identity (``run.json``, a config fingerprint), whether an output directory
may be written, cleared or resumed, and the finished-checkpoint marker's name."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from optima_jax.errors import OptimaError
from optima_jax.fileio import atomic_write_text

log = logging.getLogger("optima_jax.checkpoint")

MARKER = "optima_checkpoint.json"
RUN_FILE = "run.json"


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
