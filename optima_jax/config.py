"""Loading and validating run configs (ml_collections files + `--config.key=value` overrides).

Everything a run needs is checked here, before any model is loaded or anything is written.
"""

from __future__ import annotations

import math
import numbers
import sys
from pathlib import Path

import ml_collections

from optima_jax.errors import OptimaError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

SOLVER_METHODS = ("exact", "rapdhg", "rapdhg_sum")


def default_config() -> ml_collections.ConfigDict:
  """Every setting of a pruning run, with its default. Model configs in configs/ start from this."""
  c = ml_collections.ConfigDict()

  # --- model -----------------------------------------------------------------
  # HF directory | hub id (org/name) | path/to/file.gguf | pypi:<package> (offline GGUF from PyPI)
  c.model = ""
  c.dtype = "float32"           # activation dtype of the forward passes: float32 | bfloat16

  # --- calibration -------------------------------------------------------------
  c.calibration = ml_collections.ConfigDict()
  # c4 | c4-tfds | wikitext2 | asset:<name> | local file/glob, with optional [a:b] fraction slice;
  # mixtures as "src1:w1+src2:w2".
  c.calibration.source = "c4"
  c.calibration.nsamples = 128
  c.calibration.seqlen = 2048   # never derived from max_position_embeddings
  c.calibration.seed = 0
  c.calibration.add_bos = -1     # -1: the model family's convention; 0/1 force it
  c.calibration.micro_batch = 8  # sequences per forward pass during Hessian accumulation
  # Validation Hessian (for auto damping and the keep-or-skip safeguard): a source the user names
  # ("" = none; "holdout" = hold out calibration.validation_fraction of the calibration samples).
  c.calibration.validation_source = ""
  c.calibration.validation_nsamples = 16
  c.calibration.validation_fraction = 0.125

  # --- sparsity ---------------------------------------------------------------
  c.sparsity = "0.5"             # unstructured ratio removed ("0.5"), or N:M kept ("2:4")
  c.prune_scope = "all"          # all | mlp  (mlp = skip attention, the paper's 2:4 tables)

  # --- mask selector ------------------------------------------------------------
  c.selector = "wanda"           # magnitude | wanda | sparsegpt | thanos | external
  c.selector_options = ml_collections.ConfigDict()
  c.selector_options.mask_file = ""   # for selector=external

  # --- weight update ------------------------------------------------------------
  c.weight_update = "optima"     # optima | none | own (the selector's own update) | adam
  c.solver = ml_collections.ConfigDict()
  # exact | rapdhg (the paper's QP as its code builds it: mean covariance, [-w, -w+1e-4] box, dummy rows,
  # start at 0, bf16 write-back, 95%-OPTIMAL per mini-batch; optima_jax/qp/paper.py) | rapdhg_sum (raPDHG on
  # the un-normalised Σxᵀx with fixed pruned entries and a warm start: a far tighter solve at the same eps)
  c.solver.method = "exact"
  c.solver.eps_abs = 1e-2        # rAPDHG tolerances (paper: 1e-2)
  c.solver.eps_rel = 1e-2
  c.solver.iteration_limit = 100_000
  c.solver.rtol = 1e-4           # exact solver: per-row stop on the relative residual (float32)
  c.solver.damp = 0.01           # ridge: H + damp * mean(diag H) * I (a number; 0 = the paper's QP; chosen by
                                 # held-out perplexity, docs/results.md; for automatic damping set
                                 # solver.auto_damp=True, which needs calibration.validation_source)
  c.solver.auto_damp_grid = (0.0, 0.01, 0.1, 1.0)
  c.solver.auto_damp = False
  c.solver.memory_budget_gb = 2.0
  c.solver.min_converged_fraction = 0.95   # below this the layer keeps its selector's weights
  c.adam = ml_collections.ConfigDict()
  c.adam.steps = 500
  c.adam.lrs = (1e-2, 1e-3, 1e-4, 1e-5)

  # --- devices ----------------------------------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1               # devices on the data axis (-1: all devices / rows)
  c.mesh.rows = 1                # devices on the solver's rows axis
  c.mesh.shard_params = False    # split each block's MLP weights over the data axis (blocks too big for a device)
  c.distributed = False          # call jax.distributed.initialize() (multi-host)
  c.hidden_states_on = "device"  # device | host: where calibration hidden states live between blocks

  # --- output -----------------------------------------------------------------
  c.output_dir = "runs/default"
  c.overwrite = False
  c.export_hf = False
  c.save_masks = True

  # --- evaluation printed before/after ----------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.source = ""             # "" = skip; e.g. wikitext2 or a local text file
  c.eval.seqlen = 1024
  c.eval.max_windows = 0         # 0 = all windows
  c.eval.batch_size = 4
  c.eval.mask_only = False       # also evaluate the dense weights with this run's masks (no update)
  return c



def resolve_config_path(value: str) -> str:
  """A path, or a bare name looked up in configs/ (with or without .py)."""
  p = Path(value)
  if p.is_file():
    return str(p)
  for cand in (CONFIG_DIR / value, CONFIG_DIR / f"{value}.py"):
    if cand.is_file():
      return str(cand)
  raise OptimaError(f"config file not found: {value} (looked in the current directory and {CONFIG_DIR})")


def parse_args(argv: list[str], flag_name: str = "config") -> tuple[ml_collections.ConfigDict, list[str]]:
  """Parse `--config FILE --config.a.b=v ...` with absl + ml_collections; one-line errors.

  Returns (config, remaining argv).
  """
  from absl import flags
  from ml_collections import config_flags

  argv = list(argv)
  # --config FILE / --config=FILE: resolve a bare name to configs/<name>.py before absl reads the file.
  for i, a in enumerate(argv):
    if a == f"--{flag_name}" and i + 1 < len(argv):
      argv[i + 1] = resolve_config_path(argv[i + 1])
    elif a.startswith(f"--{flag_name}="):
      argv[i] = f"--{flag_name}=" + resolve_config_path(a.split("=", 1)[1])
  if not any(a == f"--{flag_name}" or a.startswith(f"--{flag_name}=") for a in argv[1:]):
    raise OptimaError(f"missing --{flag_name}: e.g. --{flag_name} configs/gemma3_270m.py")

  fv = flags.FlagValues()
  # sys_argv: the overrides (--config.a.b=v) are looked up in this argv, not in sys.argv, so an in-process call
  # with its own argv list sees its own overrides.
  holder = config_flags.DEFINE_config_file(flag_name, None, "run config file", flag_values=fv,
                                           lock_config=True, sys_argv=argv)
  try:
    rest = fv(argv)
    cfg = holder.value
  except SyntaxError as e:
    raise OptimaError(f"malformed config file {e.filename}: {e.msg} (line {e.lineno})") from None
  except AttributeError as e:
    bad = [a for a in argv if a.startswith(f"--{flag_name}.")]
    raise OptimaError(f"unknown config key {e} in overrides {' '.join(bad)}") from None
  except KeyError as e:
    raise OptimaError(f"unknown config key {e}") from None
  except flags.Error as e:
    raise OptimaError(str(e).splitlines()[0]) from None
  except Exception as e:  # a config file that raises while building its ConfigDict
    raise OptimaError(f"malformed config file: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") \
        from None
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise OptimaError("the config file's get_config() must return an ml_collections.ConfigDict")
  return cfg, rest


def validate(cfg) -> None:
  """Check every setting whose error would otherwise surface after minutes of work."""
  from optima_jax.selectors import SELECTORS
  from optima_jax.sparsity import SparsitySpec
  from optima_jax.updates import UPDATES

  if not cfg.model:
    raise OptimaError("config.model is empty: set an HF directory, hub id, .gguf file or pypi:<package>")
  src = str(cfg.model)
  looks_local = src.startswith(("/", ".", "~")) or src.endswith(".gguf")
  if looks_local and not Path(src).expanduser().exists():
    raise OptimaError(f"model path does not exist: {src}")
  SparsitySpec.parse(cfg.sparsity)
  if cfg.prune_scope not in ("all", "mlp"):
    raise OptimaError(f"prune_scope must be 'all' or 'mlp', got {cfg.prune_scope!r}")
  if cfg.selector not in SELECTORS:
    raise OptimaError(f"unknown selector {cfg.selector!r}; available: {', '.join(sorted(SELECTORS))}")
  if cfg.selector == "external" and not Path(cfg.selector_options.mask_file).is_file():
    raise OptimaError(f"selector=external needs selector_options.mask_file; not a file: "
                      f"{cfg.selector_options.mask_file!r}")
  if cfg.weight_update not in UPDATES:
    raise OptimaError(f"unknown update {cfg.weight_update!r}; available: {', '.join(sorted(UPDATES))}")
  if cfg.solver.method not in SOLVER_METHODS:
    raise OptimaError(f"solver.method must be one of {SOLVER_METHODS}, got {cfg.solver.method!r}")
  _check_solver(cfg.solver)
  _check_number("adam.steps", cfg.adam.steps, ge=1, integer=True)
  _check_numbers("adam.lrs", cfg.adam.lrs, gt=0)
  if cfg.solver.auto_damp and not cfg.calibration.validation_source:
    raise OptimaError("solver.auto_damp=True needs calibration.validation_source (a named source or 'holdout')")
  cal = cfg.calibration
  for key in ("nsamples", "seqlen", "micro_batch"):
    if int(cal[key]) < 1:
      raise OptimaError(f"calibration.{key} must be >= 1, got {cal[key]}")
  if cal.add_bos not in (-1, 0, 1):
    raise OptimaError(f"calibration.add_bos must be -1 (the model family's convention), 0 or 1, got {cal.add_bos!r}")
  if cal.validation_source == "holdout":
    _check_number("calibration.validation_fraction", cal.validation_fraction, gt=0, lt=1)
  elif cal.validation_source:
    _check_number("calibration.validation_nsamples", cal.validation_nsamples, ge=1, integer=True)
  # eval: windows of eval.seqlen tokens (>= 2: a token and its target); eval.max_windows 0 = all windows.
  _check_number("eval.seqlen", cfg.eval.seqlen, ge=2, integer=True)
  _check_number("eval.batch_size", cfg.eval.batch_size, ge=1, integer=True)
  _check_number("eval.max_windows", cfg.eval.max_windows, ge=0, integer=True, note=" (0 = all windows)")
  if cfg.dtype not in ("float32", "bfloat16"):
    raise OptimaError(f"dtype must be float32 or bfloat16, got {cfg.dtype!r}")
  if cfg.hidden_states_on not in ("device", "host"):
    raise OptimaError(f"hidden_states_on must be device or host, got {cfg.hidden_states_on!r}")
  if not cfg.output_dir:
    raise OptimaError("output_dir is empty")
  for key, src in (("calibration.source", cal.source), ("calibration.validation_source", cal.validation_source),
                   ("eval.source", cfg.eval.source)):
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


def _check_number(key: str, v, *, gt=None, ge=None, lt=None, le=None, integer=False, note="") -> None:
  """`key` holds a finite number (an integer if `integer`) within the given bounds; else a one-line OptimaError."""
  bounds = [f"{op} {b}" for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None]
  want = ("an integer" if integer else "a finite number") + (" " + " and ".join(bounds) if bounds else "")
  ok = (not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v)
        and (not integer or float(v).is_integer())
        and (gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt) and (le is None or v <= le))
  if not ok:
    raise OptimaError(f"{key} must be {want}{note}, got {v!r}")


def _check_numbers(key: str, values, **bounds) -> None:
  """`key` holds a non-empty list/tuple of finite numbers, each within the bounds."""
  if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) == 0:
    raise OptimaError(f"{key} must be a non-empty list of numbers, got {values!r}")
  for i, v in enumerate(values):
    _check_number(f"{key}[{i}]", v, **bounds)


def check_source(source: str, key: str) -> None:
  """Parse a data source and check that its local files/assets exist (hub sources are checked when read)."""
  from optima_jax import data
  try:
    for spec in data.parse_source(source):
      if spec.kind != "hub":
        data._local_files(spec)
  except OptimaError as e:
    raise OptimaError(f"{key}: {e}") from None


def to_dict(cfg) -> dict:
  return cfg.to_dict()


def main_error(e: Exception) -> int:
  print(f"error: {e}", file=sys.stderr)
  return 2
