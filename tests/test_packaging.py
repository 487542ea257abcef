"""The installed product: the wheel claims only the optima_jax namespace, ships the configs and every model
package, and (slow) runs from a fresh virtualenv without the test extra, hence without torch."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = out.glob("optima_jax-*.whl")
    return whl


def test_wheel_has_one_top_level_name_and_ships_configs_and_models(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"optima_jax"}
    for cfg in (REPO / "configs").glob("*.py"):
        assert f"optima_jax/configs/{cfg.name}" in names, cfg.name
    for init in (REPO / "models").rglob("__init__.py"):
        rel = init.relative_to(REPO / "models").as_posix()
        assert f"optima_jax/models/{rel}" in names, rel
    for init in (REPO / "optima_jax").rglob("__init__.py"):
        assert init.relative_to(REPO).as_posix() in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry).decode()
    assert "optima-prune = optima_jax.prune:cli" in scripts and "optima-eval = optima_jax.evaluate:cli" in scripts


@pytest.mark.slow
def test_fresh_venv_from_the_wheel_prunes_without_torch(wheel, tmp_path):
    """pip install <wheel> (its declared dependencies only) in a virtualenv that does not see this one's
    packages; then the console scripts: --help, a tiny prune from the installed `base` config, optima-eval."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py, bindir = venv / "bin" / "python", venv / "bin"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(JAX_PLATFORMS="cpu", TQDM_DISABLE="1", PATH=f"{bindir}:{env.get('PATH', '')}")
    work = tmp_path / "work"  # not the source tree: configs must come from the wheel
    work.mkdir()

    def run(*cmd):
        return subprocess.run(list(cmd), cwd=work, env=env, capture_output=True, text=True)

    assert run(str(py), "-c", "import torch").returncode != 0  # the runtime really has no torch
    assert run(str(py), "-c", "import models").returncode != 0  # and no generic top-level package
    h = run("optima-prune", "--help")
    assert h.returncode == 0 and "--config.solver.damp=" in h.stdout, h.stderr[-2000:]
    ckpt = tiny.make_checkpoint(tmp_path / "ckpt", "llama")
    text = tiny.shared_text("wiki_test.txt")
    p = run(
        "optima-prune",
        "--config",
        "base",
        f"--config.model={ckpt}",
        f"--config.output_dir={work / 'run'}",
        f"--config.calibration.source={tiny.shared_text('wiki_train.txt')}",
        "--config.calibration.nsamples=4",
        "--config.calibration.seqlen=32",
        f"--config.eval.source={text}",
        "--config.eval.seqlen=48",
        "--config.eval.max_windows=2",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert (work / "run" / "checkpoint").is_dir()
    e = run("optima-eval", "--model", str(work / "run"), "--data", str(text), "--seqlen", "48", "--max-windows", "2")
    assert e.returncode == 0 and "perplexity" in e.stdout, e.stderr[-3000:]
    lm = run(str(py), "-m", "optima_jax.lm_eval", "--help")
    assert lm.returncode == 2 and "pip install 'optima_jax[lm-eval]'" in lm.stderr, lm.stderr[-2000:]
