"""The sequential engine against independent references: float64 NumPy XᵀX over captured inputs, the
model's plain forward, and a 1-device vs 8-device run."""

import os
import subprocess
import sys
from pathlib import Path

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
    from optima_jax import models

    d = tiny.make_checkpoint(tmp_path / family, family)
    loaded = models.load_model(str(d), dtype="float32")
    return loaded, models.build_model(loaded.config, loaded.params, dtype=jnp.float32)


def _ids(n, T, vocab, seed=0):
    return np.random.default_rng(seed).integers(4, vocab, size=(n, T)).astype(np.int32)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_hessians_match_float64_and_identity_reproduces_forward(tmp_path, family):
    from optima_jax.models import api
    from optima_jax.engine import run_sequential

    loaded, model = _load(tmp_path, family)
    cfg = loaded.config
    ids = _ids(6, 20, tiny.VOCAB)  # longer than gemma3's sliding window (8)
    record, last = {}, {}

    def done(d):
        last["hidden"] = d.hidden.numpy()

    counter = run_sequential(
        model, cfg, ids, _identity_pruner(record), micro_batch=4, on_block_done=done, progress=False
    )
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


def test_batch_plan_pads_ragged_micro_batches():
    from optima_jax.engine import batch_plan

    # 13 sequences, micro-batches of 6, 8 devices: 6, 6, 1 real rows, each padded to 8.
    assert batch_plan(13, 6, 8) == [(0, 6, 8), (6, 6, 8), (12, 1, 8)]
    assert batch_plan(16, 8, 8) == [(0, 8, 8), (8, 8, 8)]
    assert batch_plan(5, 8, 1) == [(0, 5, 5)]


def test_hessians_equal_on_8_devices(tmp_path):
    """The data axis over 8 CPU devices gives the same H and hidden states as 1 device, to fp32 rounding,
    with ragged micro-batches (13 sequences in micro-batches of 6: padded to 8 rows, the padding masked out
    of H), and with the block's MLP weights split over the mesh (mesh.shard_params)."""
    d = tiny.make_checkpoint(tmp_path / "llama", "llama")
    script = f"""
import sys, numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, {str(REPO / 'tests')!r})
from optima_jax import models; import test_engine
from optima_jax.engine import run_sequential
from optima_jax.sharding import make_meshes, shard_block_state
loaded = models.load_model({str(d)!r})
ids = test_engine._ids(13, 12, {tiny.VOCAB})
out = {{}}
for tag, n, shard in (("1", 1, False), ("8", 8, False), ("8s", 8, True)):
  model = models.build_model(loaded.config, loaded.params, dtype=jnp.float32)
  rec, last = {{}}, {{}}
  mesh = make_meshes(data=n)[0]
  def done(dn):
    last["h"] = dn.hidden.numpy()
    last["rows"] = dn.hidden.rows
  run_sequential(model, loaded.config, ids, test_engine._identity_pruner(rec), micro_batch=6, mesh=mesh,
                 shard_params=shard, on_block_done=done, progress=False)
  out.update({{f"{{tag}}/{{b}}:{{nm}}": v for (b, nm), v in rec.items()}})
  out[f"{{tag}}/hidden"] = last["h"]
  out[f"{{tag}}/rows"] = np.array(last["rows"])
# the MLP weights really are split: gate/up along out_features, down along in_features
from optima_jax.models import api
st = shard_block_state(__import__("flax").nnx.state(model.layers[0]), make_meshes(data=8)[0], api.mlp_linears(loaded.config))
print(tuple(st["mlp"]["gate_proj"]["weight"][...].sharding.spec), tuple(st["mlp"]["down_proj"]["weight"][...].sharding.spec))
np.savez(sys.argv[1], **out)
print(jax.device_count())
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    path = tmp_path / "H.npz"
    r = subprocess.run(
        [sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "8"
    assert lines[-2] == "('data', None) (None, 'data')"
    got = dict(np.load(path))
    assert list(got["1/rows"]) == [6, 6, 1] and list(got["8/rows"]) == [8, 8, 8]
    keys = [k.split("/", 1)[1] for k in got if k.startswith("1/") and ":" in k]
    assert len(keys) == 3 * 7
    for tag in ("8", "8s"):
        for k in keys:
            a, b = got[f"1/{k}"], got[f"{tag}/{k}"]
            assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-6, (tag, k)
        assert got[f"{tag}/hidden"].shape == (13, 12, 64)
        np.testing.assert_allclose(got[f"{tag}/hidden"], got["1/hidden"], rtol=0, atol=1e-5, err_msg=tag)


def test_auto_damp_adds_no_forward_passes(tmp_path):
    """Per-linear automatic damping from a validation Hessian: H_val is accumulated in the same block passes
    as H, so a run with auto damping makes exactly the passes of a fixed-damp run with the same validation
    set (2 per micro-batch per block), and every linear reports a damp from the grid."""
    from optima_jax.config import default_config
    from optima_jax.engine import ForwardCounter, run_sequential
    from optima_jax.pruner import make_pruner

    loaded, _ = _load(tmp_path, "llama")
    ids, val_ids = _ids(6, 16, tiny.VOCAB), _ids(3, 16, tiny.VOCAB, seed=1)
    counts, damps = {}, {}
    for auto in (False, True):
        from optima_jax import models

        model = models.build_model(loaded.config, loaded.params, dtype=jnp.float32)
        cfg = default_config()
        cfg.selector, cfg.weight_update, cfg.solver.auto_damp = "wanda", "optima", auto
        rows = []
        counter = run_sequential(
            model,
            loaded.config,
            ids,
            make_pruner(cfg),
            val_ids=val_ids,
            micro_batch=4,
            counter=ForwardCounter(),
            progress=False,
            on_block_done=lambda d: rows.extend(r.row for r in d.results.values()),
        )
        counts[auto], damps[auto] = counter.block_passes, [r["damp"] for r in rows]
    n_micro = 2 + 1  # 6 calibration sequences in micro-batches of 4, 3 validation ones
    assert counts[False] == counts[True] == loaded.config.num_layers * 2 * n_micro
    assert set(damps[False]) == {default_config().solver.damp}
    assert set(damps[True]) <= set(default_config().solver.auto_damp_grid) and len(damps[True]) == 7 * 3
