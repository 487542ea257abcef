"""The sequential engine against independent references: float64 NumPy XᵀX over captured inputs, the
model's plain forward, and a 1-device vs 8-device run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny

REPO = Path(__file__).resolve().parents[1]


def _identity_pruner(record):
  from optima_jax.engine import LinearResult

  def prune(task):
    record[(task.block, task.name)] = np.asarray(task.stats.H)
    return LinearResult(weight=task.weight, keep_mask=jnp.ones(task.weight.shape, bool), row={})
  return prune


def _load(tmp_path, family):
  import models
  d = tiny.make_checkpoint(tmp_path / family, family)
  loaded = models.load_model(str(d), dtype="float32")
  return loaded, models.build_model(loaded.config, loaded.params, dtype=jnp.float32)


def _ids(n, T, vocab, seed=0):
  return np.random.default_rng(seed).integers(4, vocab, size=(n, T)).astype(np.int32)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_hessians_match_float64_and_identity_reproduces_forward(tmp_path, family):
  from models import api
  from optima_jax.engine import run_sequential

  loaded, model = _load(tmp_path, family)
  cfg = loaded.config
  ids = _ids(6, 20, tiny.VOCAB)   # longer than gemma3's sliding window (8)
  record, last = {}, {}

  def done(d):
    last["hidden"] = np.asarray(d.hidden)

  counter = run_sequential(model, cfg, ids, _identity_pruner(record), micro_batch=4, on_block_done=done,
                           progress=False)
  # Independent reference: run the dense model block by block, capture each linear input, XᵀX in float64.
  h = model.embed(jnp.asarray(ids))
  pos = jnp.arange(ids.shape[1])[None]
  for i in range(cfg.num_layers):
    h_next, inputs = model.layers[i](h, pos, capture=True)
    for name in api.linear_names(cfg):
      x = np.asarray(inputs[name], np.float64).reshape(-1, inputs[name].shape[-1])
      ref = x.T @ x
      got = record[(i, name)]
      assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-5, (i, name)
    h = h_next
  np.testing.assert_allclose(last["hidden"], np.asarray(h), rtol=0, atol=1e-5)
  # Every micro-batch goes through each block twice (statistics, then outputs) and nothing more.
  assert counter.block_passes == cfg.num_layers * 2 * 2


def test_hessians_equal_on_8_devices(tmp_path):
  """The data axis over 8 CPU devices gives the same H as 1 device, to fp32 rounding."""
  d = tiny.make_checkpoint(tmp_path / "llama", "llama")
  script = f"""
import sys, numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, {str(REPO / 'tests')!r})
import models, test_engine
from optima_jax.engine import run_sequential
from optima_jax.sharding import make_meshes
loaded = models.load_model({str(d)!r})
model = models.build_model(loaded.config, loaded.params, dtype=jnp.float32)
ids = test_engine._ids(16, 12, {tiny.VOCAB})
rec = {{}}
mesh = make_meshes(data=int(sys.argv[1]))[0]
run_sequential(model, loaded.config, ids, test_engine._identity_pruner(rec), micro_batch=8, mesh=mesh, progress=False)
np.savez(sys.argv[2], **{{f"{{b}}:{{n}}": v for (b, n), v in rec.items()}})
print(jax.device_count())
"""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  outs = {}
  for n in (1, 8):
    path = tmp_path / f"H{n}.npz"
    r = subprocess.run([sys.executable, "-c", script, str(n), str(path)], env=env, capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "8"
    outs[n] = dict(np.load(path))
  for k in outs[1]:
    a, b = outs[1][k], outs[8][k]
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-6, k
