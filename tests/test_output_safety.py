"""Output safety: what overwrite may clear, atomic writes, the stored dense perplexity, accurate CLI errors.

CLI cases run the real `python -m optima_jax.prune` on the tiny random LLaMA checkpoint (tests/tiny.py);
failed writes are real ones (a per-process file size limit, RLIMIT_FSIZE, or a path that is a directory).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tiny
from test_pipeline import ENV, REPO, cli_args, run_cli

from optima_jax import checkpoint, fileio
from optima_jax.errors import OptimaError


def _eval_args(max_windows: int) -> list[str]:
    return [
        f"--config.eval.source={tiny.shared_text('wiki_test.txt')}",
        "--config.eval.seqlen=32",
        f"--config.eval.max_windows={max_windows}",
    ]


def _snapshot(root: Path) -> dict:
    """Every file and directory under `root`: relative path -> bytes (None for a directory)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in root.rglob("*")}


def _one_error_line(r) -> str:
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(model_dir, tmp_path_factory):
    """A finished CLI run with a dense/pruned evaluation (2 windows); tests copy it before changing it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run_cli(*cli_args(model_dir, out, *_eval_args(2)))
    assert checkpoint.is_pruned_checkpoint(out)
    return out


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, symlinks=True)
    return dest


# ----------------------------------------------------------------------------- overwrite / output_dir


def _not_a_run(tmp_path) -> Path:
    d = tmp_path / "home"
    (d / "projects" / "src").mkdir(parents=True)
    (d / "notes.txt").write_text("precious\n")
    (d / "projects" / "src" / "main.py").write_text("print('hi')\n")
    (d / "run.json").write_text(json.dumps({"name": "another tool's run file"}))  # not an optima_jax run.json
    return d


def test_overwrite_never_clears_a_directory_that_holds_no_run(tmp_path):
    d = _not_a_run(tmp_path)
    before = _snapshot(d)
    for overwrite in (False, True):
        with pytest.raises(OptimaError, match="holds no optima_jax run") as e:
            checkpoint.check_output_dir(d, "f" * 16, overwrite)
        assert str(d) in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(OptimaError, match="holds no optima_jax run"):
            checkpoint.claim_output_dir(d, "f" * 16, overwrite, {})
    assert _snapshot(d) == before


def test_cli_overwrite_refuses_non_run_directory_before_any_work(model_dir, tmp_path):
    d = _not_a_run(tmp_path)
    before = _snapshot(d)
    r = run_cli(*cli_args(model_dir, d, "--config.overwrite=True"), check=False)
    assert r.returncode == 2
    line = _one_error_line(r)
    assert str(d) in line and "holds no optima_jax run" in line, line
    assert _snapshot(d) == before


def test_overwrite_replaces_a_previous_run_and_only_with_overwrite(tmp_path):
    d = tmp_path / "run"
    assert checkpoint.claim_output_dir(d, "a" * 16, False, {"sparsity": "0.5"}) is False
    (d / "progress" / "blocks" / "0").mkdir(parents=True)
    (d / "progress" / "blocks" / "0" / "data").write_bytes(b"\0" * 64)
    (d / "report.json").write_text("{}")
    assert checkpoint.claim_output_dir(d, "a" * 16, False, {}) is True  # the same run resumes
    before = _snapshot(d)
    with pytest.raises(OptimaError, match="different run"):
        checkpoint.check_output_dir(d, "b" * 16, False)
    with pytest.raises(OptimaError, match="different run"):
        checkpoint.claim_output_dir(d, "b" * 16, False, {})
    assert _snapshot(d) == before
    checkpoint.check_output_dir(d, "b" * 16, True)
    assert _snapshot(d) == before  # the check alone changes nothing
    assert checkpoint.claim_output_dir(d, "b" * 16, True, {"sparsity": "0.6"}) is False
    assert sorted(p.name for p in d.iterdir()) == [checkpoint.RUN_FILE]
    assert json.loads((d / checkpoint.RUN_FILE).read_text())["fingerprint"] == "b" * 16
    # A finished checkpoint recognised by its marker alone is a run too (replaceable with overwrite only).
    m = tmp_path / "marker_only"
    (m / "checkpoint").mkdir(parents=True)
    fileio.atomic_write_text(m / checkpoint.MARKER, json.dumps({"format": "optima_jax/1"}))
    with pytest.raises(OptimaError, match="different run"):
        checkpoint.claim_output_dir(m, "c" * 16, False, {})
    checkpoint.claim_output_dir(m, "c" * 16, True, {})
    assert sorted(p.name for p in m.iterdir()) == [checkpoint.RUN_FILE]


def test_cli_overwrite_replaces_previous_run(model_dir, finished_run, tmp_path):
    out = _copy(finished_run, tmp_path / "run")
    old = json.loads((out / checkpoint.RUN_FILE).read_text())["fingerprint"]
    (out / "stale.txt").write_text("left by the previous run\n")
    run_cli(*cli_args(model_dir, out, "--config.sparsity=0.6", "--config.overwrite=True"))
    assert json.loads((out / checkpoint.RUN_FILE).read_text())["fingerprint"] != old
    assert not (out / "stale.txt").exists() and not (out / "eval_dense.json").exists()
    masks = checkpoint.restore_masks(out)
    assert masks
    for name, keep in masks.items():
        assert np.all((~keep).sum(axis=1) == int(keep.shape[1] * 0.6)), name


def test_output_dir_that_is_a_file_is_refused(model_dir, tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("not a directory\n")
    for overwrite in (False, True):
        with pytest.raises(OptimaError, match="is an existing file"):
            checkpoint.check_output_dir(f, "f" * 16, overwrite)
    with pytest.raises(OptimaError, match="is a file, not a directory"):
        checkpoint.check_output_dir(f / "sub" / "run", "f" * 16, False)
    r = run_cli(*cli_args(model_dir, f, "--config.overwrite=True"), check=False)
    assert r.returncode == 2
    line = _one_error_line(r)
    assert str(f) in line and "is an existing file" in line, line
    assert f.read_text() == "not a directory\n"


# ----------------------------------------------------------------------------- atomic writes


def _with_file_size_limit(code: str, limit: int) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python whose writes beyond `limit` bytes per file fail (EFBIG)."""
    prelude = (
        "import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"def limit():\n  resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=REPO, env=ENV, capture_output=True, text=True
    )


def test_atomic_write_text_failure_keeps_previous_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "run.json"
    fileio.atomic_write_text(p, "previous\n")
    # Text that cannot be encoded: the write fails after the temporary file was created.
    with pytest.raises(UnicodeEncodeError):
        fileio.atomic_write_text(p, "new " + "\ud800" * 10)
    assert p.read_text() == "previous\n" and os.listdir(tmp_path) == ["run.json"]
    # A write that fails half way (the file size limit is hit after 4 KiB of 1 MiB): the same.
    r = _with_file_size_limit(
        f"""
      from optima_jax import fileio
      limit()
      try:
        fileio.atomic_write_text({str(p)!r}, "x" * (1 << 20))
      except OSError as e:
        print("OSError", e.filename)
      """,
        4096,
    )
    assert r.returncode == 0 and r.stdout.split() == ["OSError", str(p)], r.stderr[-2000:]
    assert p.read_text() == "previous\n" and os.listdir(tmp_path) == ["run.json"]
    # A new file that fails is not created at all.
    r = _with_file_size_limit(
        f"""
      from optima_jax import fileio
      limit()
      try:
        fileio.atomic_write_text({str(tmp_path / 'new.json')!r}, "x" * (1 << 20))
      except OSError:
        print("OSError")
      """,
        4096,
    )
    assert r.stdout.strip() == "OSError", r.stderr[-2000:]
    assert os.listdir(tmp_path) == ["run.json"]


def test_atomic_write_text_gives_new_files_the_usual_mode(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("x")
    fileio.atomic_write_text(tmp_path / "atomic", "x")
    assert (tmp_path / "atomic").stat().st_mode == plain.stat().st_mode


def test_report_png_failure_keeps_previous_figure(tmp_path):
    from optima_jax import report

    rows = [
        {"block": b, "linear": f"mlp.{n}", "ratio": 0.5 + 0.1 * b, "skipped": False}
        for b in range(3)
        for n in ("up_proj", "down_proj")
    ]
    png = tmp_path / "report.png"
    report.plot_ratios(rows, png)
    before = png.read_bytes()
    assert before.startswith(b"\x89PNG") and len(before) > 2048
    r = _with_file_size_limit(
        f"""
      import json
      from optima_jax import report
      import matplotlib.pyplot
      limit()
      try:
        report.plot_ratios(json.loads({json.dumps(rows)!r}), {str(png)!r})
      except OSError as e:
        print("OSError")
      """,
        1024,
    )
    assert r.stdout.strip() == "OSError", r.stderr[-2000:]
    assert png.read_bytes() == before and os.listdir(tmp_path) == ["report.png"]


# ----------------------------------------------------------------------------- the stored dense perplexity


def _dense_ppl(model_dir, max_windows: int) -> float:
    """The dense model's perplexity with the eval settings of `_eval_args`, computed here independently."""
    import jax.numpy as jnp
    from optima_jax import models
    from optima_jax import data, evaluate

    loaded = models.load_model(str(model_dir))
    model = models.build_model(loaded.config, loaded.params, dtype=jnp.float32)
    tok = loaded.tokenizer
    bos = tok.bos_token_id if loaded.config.adds_bos(tok) else None
    return evaluate.perplexity(
        model,
        data.eval_tokens(str(tiny.shared_text("wiki_test.txt")), tok),
        seqlen=32,
        batch_size=4,
        max_windows=max_windows,
        bos_id=bos,
    )


def test_dense_perplexity_is_reused_only_with_the_same_eval_settings(model_dir, finished_run, tmp_path):
    out = _copy(finished_run, tmp_path / "run")
    f = out / "eval_dense.json"
    two, three = _dense_ppl(model_dir, 2), _dense_ppl(model_dir, 3)
    assert two != pytest.approx(three, rel=1e-6)  # the settings change is visible in the value
    stored = json.loads(f.read_text())
    assert stored["settings"]["max_windows"] == 2 and stored["ppl"] == pytest.approx(two, rel=1e-5)

    # The same settings: the stored value is reused (the file is not rewritten).
    before = (f.read_bytes(), f.stat().st_mtime_ns)
    run_cli(*cli_args(model_dir, out, *_eval_args(2)))
    assert (f.read_bytes(), f.stat().st_mtime_ns) == before

    # Another eval setting (not part of the run's fingerprint: the run resumes): measured again.
    r = run_cli(*cli_args(model_dir, out, *_eval_args(3)))
    assert "resuming" in r.stderr
    stored = json.loads(f.read_text())
    assert stored["settings"]["max_windows"] == 3 and stored["ppl"] == pytest.approx(three, rel=1e-5)


# ----------------------------------------------------------------------------- CLI error messages


def test_os_error_mentions_resuming_only_when_there_is_progress(model_dir, finished_run, tmp_path):
    # No progress: a new output directory, and no file may grow beyond 64 bytes (run.json cannot be written).
    # The limit is set by a launcher that then execs the CLI (no fork-time hook in this JAX-using process).
    out = tmp_path / "fresh"
    launcher = (
        "import os, resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", launcher, *cli_args(model_dir, out)], cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert r.returncode == 1
    line = _one_error_line(r)
    assert str(out / checkpoint.RUN_FILE) in line and "resume" not in line, line
    assert not out.exists() or list(out.iterdir()) == []  # nothing half-written left behind

    # Progress of this run: the same kind of error says that rerunning resumes, and nothing is lost.
    done = _copy(finished_run, tmp_path / "done")
    (done / "log.jsonl").unlink()
    (done / "log.jsonl").mkdir()  # the log file cannot be opened
    before = _snapshot(done / "checkpoint")
    r = run_cli(*cli_args(model_dir, done, *_eval_args(2)), check=False)
    assert r.returncode == 1
    line = _one_error_line(r)
    assert str(done / "log.jsonl") in line and "resume" in line, line
    assert _snapshot(done / "checkpoint") == before and checkpoint.is_pruned_checkpoint(done)
