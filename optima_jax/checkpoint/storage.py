"""Writing to disk safely: free-space checks before a write, one-line errors for failed writes (full disk,
quota, lost mount), and holding back the library output of a failed Orbax write."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np

from optima_jax import sharding
from optima_jax.errors import OptimaError

log = logging.getLogger("optima_jax.checkpoint")


def orbax():
    """The orbax.checkpoint module (imported on first use: it is slow to import and a CLI error needs none)."""
    import orbax.checkpoint as ocp

    return ocp


def savable(x):
    """numpy for process-local values; global jax.Arrays as they are (Orbax writes each host's shards)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x
    return np.asarray(x)


def write_error(path, e: Exception) -> OptimaError:
    """One-line error for a failed checkpoint write (a full disk, a quota, a lost mount...)."""

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


class LibraryStderr:
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


def nbytes(tree) -> int:
    return int(sum(getattr(x, "nbytes", 0) for x in jax.tree_util.tree_leaves(tree)))


def ensure_free_space(path: Path, nbytes: int, what: str) -> None:
    """Refuse a write of about `nbytes` (+5% and 64 KiB for metadata) that cannot fit on `path`'s filesystem,
    before anything is written: a full disk mid-write is still handled, but this avoids it. Every process of
    a multi-process run must call it (process 0's answer is broadcast)."""

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
