"""File-system helpers: the one cache root, and atomic writes shared by the checkpoint, report, asset and
token-cache writers."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """``${OPTIMA_JAX_CACHE:-~/.cache/optima_jax}/<kind>``, the one home of every cache (kind: ``data`` text
    assets, ``models`` GGUF downloads, ``tokens`` token ids, ``tokenizers`` converted GGUF tokenizers)."""
    root = os.environ.get("OPTIMA_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "optima_jax")
    return Path(root) / kind


def _new_file_mode() -> int:
    """The mode open() would give a new file (0o666 less the umask): mkstemp's files are 0o600."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write, binary: bool = False):
    """Create `path` by calling `write(f)` on a temporary file in the same directory, then renaming it over
    `path`: readers see the old file or the new one, never half of one. On any failure (including a kill
    signal raised as an exception) the temporary file is removed and an existing `path` is left as it was.
    An OSError without a file name (e.g. a full disk mid-write) is re-raised naming `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, _new_file_mode())
            with os.fdopen(
                fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})
            ) as f:
                fd = None
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            if e.filename is None and e.errno is not None:
                raise OSError(e.errno, e.strerror or str(e), str(path)) from e
            raise
    except BaseException:
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str):
    """Write `text` (UTF-8) to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda f: f.write(text))


def swap_in(staging: str, final: str, before_swap=None) -> None:
    """Replace directory ``final`` by the complete directory ``staging`` (renames only; any old ``final`` is
    moved to ``<final>.old`` first and removed last). ``before_swap()`` runs just before the renames."""
    old = str(final).rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if before_swap is not None:
        before_swap()
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)
