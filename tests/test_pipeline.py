"""End-to-end: tiny random LLaMA and Gemma 3 checkpoints through `python -m optima_jax.prune`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tiny

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TQDM_DISABLE="1")


def cli_args(model_dir, out, *extra):
    return [
        sys.executable,
        "-m",
        "optima_jax.prune",
        "--config",
        "configs/base.py",
        f"--config.model={model_dir}",
        f"--config.output_dir={out}",
        f"--config.calibration.source={tiny.shared_text('wiki_train.txt')}",
        "--config.calibration.nsamples=8",
        "--config.calibration.seqlen=32",
        "--config.calibration.micro_batch=4",
        *extra,
    ]


def run_cli(*args, check=True):
    r = subprocess.run(list(args), cwd=REPO, env=ENV, capture_output=True, text=True)
    if check:
        assert r.returncode == 0, r.stderr[-4000:]
    return r


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {f: tiny.make_checkpoint(root / f, f) for f in ("llama", "gemma3")}


def _load_flat(model_dir):
    from safetensors.numpy import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_prune_end_to_end(ckpts, tmp_path, family):
    import jax.numpy as jnp
    from optima_jax import models
    import torch
    import transformers
    from optima_jax import checkpoint

    out = tmp_path / "run"
    run_cli(
        *cli_args(
            ckpts[family],
            out,
            "--config.export_hf=True",
            f"--config.eval.source={tiny.shared_text('wiki_test.txt')}",
            "--config.eval.seqlen=64",
            "--config.eval.max_windows=4",
        )
    )
    dense = _load_flat(ckpts[family])
    pruned = checkpoint.flatten(checkpoint.restore_params(out))
    masks = checkpoint.restore_masks(out)
    report = json.loads((out / "report.json").read_text())["linears"]
    assert (out / "report.csv").exists() and (out / "report.png").exists()

    n_pruned = 0
    for name, w in dense.items():
        got = np.asarray(pruned[name])
        if name in masks:
            n_pruned += 1
            keep = masks[name]
            assert not np.any(got[~keep]), f"{name}: pruned entries are not exactly zero"
            # unstructured 50%: exactly floor(in * 0.5) removed in every row (Wanda compares within rows)
            assert np.all((~keep).sum(axis=1) == int(w.shape[1] * 0.5)), name
        else:
            np.testing.assert_array_equal(got, w, err_msg=f"{name} changed but is not a pruned linear")
    cfg = models.load_model(str(ckpts[family])).config
    assert n_pruned == 7 * cfg.num_layers
    # OPTIMA lowers every linear's output error below the mask-only (Wanda) error, on calibration tokens.
    assert len(report) == n_pruned
    for row in report:
        assert row["err_update"] < row["err_selector"], row["layer"]
        assert not row["skipped"]

    # The HF export reloads in transformers with the same logits as our model on the restored params.
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(out / "hf"), torch_dtype=torch.float32, attn_implementation="eager"
    )
    ids = np.random.default_rng(0).integers(4, tiny.VOCAB, size=(2, 24)).astype(np.int32)
    with torch.no_grad():
        ref = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    ours = models.build_model(cfg, pruned, dtype=jnp.float32)(jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=0)


def test_resume_after_kill_is_bit_identical(ckpts, tmp_path):
    from optima_jax import checkpoint

    model = ckpts["llama"]
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    run_cli(*cli_args(model, ref_out))
    kills = 0
    for step in (1, 2):  # kill after the first and then after the second block was saved
        p = subprocess.Popen(
            cli_args(model, out), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None:
            if (out / "progress" / "frontier" / str(step)).exists():
                p.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.05)
        p.wait()
    assert kills >= 1
    assert not checkpoint.is_pruned_checkpoint(out) or kills < 2
    r = run_cli(*cli_args(model, out))
    assert "resuming" in r.stderr
    a = checkpoint.flatten(checkpoint.restore_params(ref_out))
    b = checkpoint.flatten(checkpoint.restore_params(out))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_corrupted_progress_is_redone(ckpts, tmp_path):
    """A truncated resume point is detected; its block is redone and the result is unchanged."""
    from optima_jax import checkpoint

    model = ckpts["llama"]
    ref_out, out = tmp_path / "ref", tmp_path / "corrupt"
    run_cli(*cli_args(model, ref_out))
    run_cli(*cli_args(model, out))
    (out / checkpoint.MARKER).unlink()
    # Truncate every data file of the newest frontier step.
    newest = max(int(p.name) for p in (out / "progress" / "frontier").iterdir() if p.name.isdigit())
    for f in (out / "progress" / "frontier" / str(newest)).rglob("*"):
        if f.is_file() and f.stat().st_size > 100:
            f.write_bytes(f.read_bytes()[:50])
    r = run_cli(*cli_args(model, out))
    assert "unreadable" in r.stderr
    a = checkpoint.flatten(checkpoint.restore_params(ref_out))
    b = checkpoint.flatten(checkpoint.restore_params(out))
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--config.no_such_key=1"], "unknown setting 'no_such_key'"),
        (["--config.solver.damp=abc"], "damp"),
        (["--config.sparsity=1.5"], "sparsity"),
        (["--config.sparsity=4:4"], "4:4"),
        (["--config.selector=nope"], "unknown selector"),
    ],
)
def test_config_errors_before_any_work(ckpts, tmp_path, extra, needle):
    out = tmp_path / "out"
    r = run_cli(*cli_args(ckpts["llama"], out, *extra), check=False)
    assert r.returncode == 2
    lines = [l for l in r.stderr.strip().splitlines() if l]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr
    assert not out.exists()


def test_malformed_config_file(ckpts, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    r = subprocess.run(
        [sys.executable, "-m", "optima_jax.prune", "--config", str(bad)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "malformed config file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_refuses_other_runs_output_dir(ckpts, tmp_path):
    out = tmp_path / "run"
    run_cli(*cli_args(ckpts["llama"], out, "--config.calibration.nsamples=4"))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    r = run_cli(*cli_args(ckpts["llama"], out, "--config.sparsity=0.6"), check=False)
    assert r.returncode == 2 and "different run" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def _bad_model_dirs(tmp_path, good):
    """Model sources that must be refused, with the words the one-line error must contain."""
    import shutil
    from safetensors.numpy import load_file, save_file

    cases = {}
    cases["missing"] = (tmp_path / "does_not_exist", "does_not_exist")
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    (empty / "README.txt").write_text("not a model")
    cases["no_config"] = (empty, "config.json")
    arch = tmp_path / "bert"
    shutil.copytree(good, arch)
    cfg = json.loads((arch / "config.json").read_text())
    cfg["model_type"] = "bert"
    (arch / "config.json").write_text(json.dumps(cfg))
    cases["unsupported"] = (arch, "bert")
    nan = tmp_path / "nan"
    shutil.copytree(good, nan)
    t = load_file(str(nan / "model.safetensors"))
    t["model.layers.1.mlp.up_proj.weight"][0, 0] = np.nan
    save_file(t, str(nan / "model.safetensors"), metadata={"format": "pt"})
    cases["non_finite"] = (nan, "model.layers.1.mlp.up_proj.weight")
    trunc = tmp_path / "trunc"
    shutil.copytree(good, trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (trunc, "model.safetensors")
    return cases


@pytest.mark.parametrize("case", ["missing", "no_config", "unsupported", "non_finite", "truncated"])
def test_bad_models_give_one_line_errors_and_write_nothing(ckpts, tmp_path, case):
    model, needle = _bad_model_dirs(tmp_path, ckpts["llama"])[case]
    out = tmp_path / "out"
    r = run_cli(*cli_args(model, out), check=False)
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr[-2000:]
    assert not out.exists()


def test_short_corpus_and_bad_nm_are_refused(ckpts, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words of text here.\n")
    out = tmp_path / "out"
    r = run_cli(*cli_args(ckpts["llama"], out, f"--config.calibration.source={short}"), check=False)
    assert r.returncode == 2 and "short.txt" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()
    # hidden size 64, intermediate 128: M=3 does not divide in_features
    r = run_cli(*cli_args(ckpts["llama"], out, "--config.sparsity=1:3"), check=False)
    assert r.returncode == 2 and "divisible" in r.stderr, r.stderr[-2000:]
