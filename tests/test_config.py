"""Config parsing (in-process argv with overrides) and `validate`'s range checks, which must name the key."""

import math
import sys

import pytest

import tiny
from optima_jax.config import default_config, parse_args
from optima_jax.validation import validate
from optima_jax.errors import OptimaError

NAN, INF = float("nan"), float("inf")


# --- parsing an explicit argv in-process -------------------------------------------------------------------


def test_parse_args_applies_overrides_from_the_given_argv(monkeypatch):
    """The overrides come from the argv passed in, not from sys.argv (which here holds a different override)."""
    monkeypatch.setattr(sys, "argv", ["pytest", "--config", "configs/base.py", "--config.calibration.nsamples=7"])
    default = default_config()
    want_n, want_damp = default.calibration.nsamples + 3, default.solver.damp * 2 + 1
    cfg, rest = parse_args(
        [
            "prog",
            "--config",
            "configs/base.py",
            f"--config.calibration.nsamples={want_n}",
            f"--config.solver.damp={want_damp}",
            "--config.adam.lrs=(0.5, 0.25)",
        ]
    )
    assert cfg.calibration.nsamples == want_n
    assert cfg.solver.damp == want_damp
    assert tuple(cfg.adam.lrs) == (0.5, 0.25)
    assert cfg.calibration.seqlen == default.calibration.seqlen  # untouched keys keep the file's value
    assert rest == ["prog"]


def test_parse_args_twice_in_one_process_keeps_calls_apart():
    a, _ = parse_args(["prog", "--config", "base", "--config.sparsity=0.6"])
    b, _ = parse_args(["prog", "--config", "base"])
    assert a.sparsity == "0.6" and b.sparsity == default_config().sparsity


def test_parse_args_unknown_override_key_is_one_line_error():
    with pytest.raises(OptimaError, match="no_such_key") as e:
        parse_args(["prog", "--config", "configs/base.py", "--config.solver.no_such_key=1"])
    assert "\n" not in str(e.value)


def test_prune_main_in_process_reads_its_argv(tmp_path, capsys):
    """prune.main(argv) parses the overrides of its own argv list and refuses the bad one before any work."""
    from optima_jax import prune

    out = tmp_path / "out"
    rc = prune.main(
        [
            "prog",
            "--config",
            "configs/base.py",
            f"--config.model={tmp_path}",
            f"--config.output_dir={out}",
            "--config.calibration.nsamples=5",
            "--config.solver.eps_abs=-1",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("error:") and "solver.eps_abs" in err[0], err
    assert not out.exists()


# --- validate: range checks naming the key ----------------------------------------------------------------


def _valid_config(tmp_path):
    cfg = default_config()
    cfg.model = str(tmp_path)  # an existing local path: the model check passes without loading anything
    cfg.output_dir = str(tmp_path / "out")
    return cfg


def _set(cfg, key, value):
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


BAD = [
    ("solver.eps_abs", -1.0, {}),
    ("solver.eps_abs", 0.0, {}),
    ("solver.eps_abs", NAN, {}),
    ("solver.eps_abs", INF, {}),
    ("solver.eps_rel", 0.0, {}),
    ("solver.eps_rel", NAN, {}),
    ("solver.eps_rel", -INF, {}),
    ("solver.iteration_limit", 0, {}),
    ("solver.iteration_limit", -5, {}),
    ("solver.rtol", 0.0, {}),
    ("solver.rtol", -1e-4, {}),
    ("solver.rtol", NAN, {}),
    ("solver.memory_budget_gb", 0.0, {}),
    ("solver.memory_budget_gb", -2.0, {}),
    ("solver.memory_budget_gb", NAN, {}),
    ("solver.min_converged_fraction", -0.1, {}),
    ("solver.min_converged_fraction", 1.5, {}),
    ("solver.min_converged_fraction", NAN, {}),
    ("solver.auto_damp_grid", (), {}),
    ("solver.auto_damp_grid", (0.1, NAN), {}),
    ("solver.auto_damp_grid", (-0.1,), {}),
    ("solver.auto_damp_grid", (0.0, INF), {}),
    ("solver.damp", NAN, {}),
    ("solver.damp", -0.1, {}),
    ("solver.damp", INF, {}),
    ("adam.steps", 0, {}),
    ("adam.steps", -1, {}),
    ("adam.lrs", (), {}),
    ("adam.lrs", (0.0,), {}),
    ("adam.lrs", (1e-3, -1e-3), {}),
    ("adam.lrs", (NAN,), {}),
    ("adam.lrs", (INF,), {}),
    ("calibration.validation_fraction", 0.0, {"calibration.validation_source": "holdout"}),
    ("calibration.validation_fraction", -0.5, {"calibration.validation_source": "holdout"}),
    ("calibration.validation_fraction", 1.0, {"calibration.validation_source": "holdout"}),
    ("calibration.validation_fraction", NAN, {"calibration.validation_source": "holdout"}),
    ("calibration.validation_nsamples", 0, {"calibration.validation_source": "wikitext2"}),
    ("calibration.add_bos", 2, {}),
    ("calibration.add_bos", -2, {}),
    ("eval.seqlen", 0, {}),
    ("eval.seqlen", 1, {}),
    ("eval.batch_size", 0, {}),
    ("eval.batch_size", -4, {}),
    ("eval.max_windows", -1, {}),
]


def test_the_base_config_is_valid(tmp_path):
    validate(_valid_config(tmp_path))


@pytest.mark.parametrize("key,value,context", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_validate_names_the_key_of_a_bad_value(tmp_path, key, value, context):
    cfg = _valid_config(tmp_path)
    for k, v in context.items():
        _set(cfg, k, v)
    validate(cfg)  # the context alone is valid: the error below is the bad value's
    _set(cfg, key, value)
    with pytest.raises(OptimaError) as e:
        validate(cfg)
    msg = str(e.value)
    assert key in msg and "\n" not in msg, msg
    bad_item = value[-1] if isinstance(value, tuple) and value else value
    assert repr(bad_item) in msg or (isinstance(bad_item, float) and math.isnan(bad_item) and "nan" in msg), msg


GOOD_EDGES = [
    ("solver.damp", 0.0),
    ("solver.min_converged_fraction", 0.0),
    ("solver.min_converged_fraction", 1.0),
    ("solver.auto_damp_grid", (0.0,)),
    ("solver.iteration_limit", 1),
    ("adam.steps", 1),
    ("adam.lrs", (1e-6,)),
    ("calibration.add_bos", -1),
    ("calibration.add_bos", 0),
    ("calibration.add_bos", 1),
    ("eval.seqlen", 2),
    ("eval.batch_size", 1),
    ("eval.max_windows", 0),
    ("eval.max_windows", 1),
]


@pytest.mark.parametrize("key,value", GOOD_EDGES, ids=[f"{k}={v!r}" for k, v in GOOD_EDGES])
def test_validate_accepts_the_edges_of_each_range(tmp_path, key, value):
    cfg = _valid_config(tmp_path)
    _set(cfg, key, value)
    validate(cfg)


@pytest.mark.parametrize(
    "key,value", [("calibration.validation_fraction", 0.0), ("calibration.validation_nsamples", 0)]
)
def test_validation_settings_are_checked_only_when_used(tmp_path, key, value):
    """Without a validation source these settings are not read, so they are not refused."""
    cfg = _valid_config(tmp_path)
    assert cfg.calibration.validation_source == ""
    _set(cfg, key, value)
    validate(cfg)


def test_top_level_seed_is_gone():
    """Only calibration.seed seeds anything; a top-level seed would only change the run fingerprint."""
    cfg = default_config()
    assert "seed" not in cfg and "seed" in cfg.calibration


# --- the CLI ------------------------------------------------------------------------------------------------


def test_cli_refuses_bad_solver_value_before_any_work(tmp_path):
    out = tmp_path / "out"
    r = tiny.run_module(
        "optima_jax.prune",
        *("--config", "configs/base.py", f"--config.model={tmp_path}", "--config.solver.eps_abs=-1"),
        f"--config.output_dir={out}",
        timeout=300,
    )
    lines = [l for l in r.stderr.strip().splitlines() if l]
    assert r.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error:") and "solver.eps_abs" in lines[0], r.stderr
    assert not out.exists()


def test_dtype_auto_is_bfloat16_on_accelerators_and_float32_on_cpu(tmp_path):
    from optima_jax.config import resolve_dtype

    assert default_config().dtype == "auto"
    assert [resolve_dtype("auto", b) for b in ("cpu", "gpu", "tpu")] == ["float32", "bfloat16", "bfloat16"]
    assert [resolve_dtype(d, "gpu") for d in ("float32", "bfloat16")] == ["float32", "bfloat16"]
    cfg = default_config()
    cfg.model, cfg.output_dir, cfg.dtype = str(tmp_path), str(tmp_path / "out"), "float16"
    with pytest.raises(OptimaError, match="dtype must be one of auto, float32, bfloat16, got 'float16'"):
        validate(cfg)
