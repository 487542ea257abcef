"""ADAM update under a fixed mask vs the float64 exact least-squares optimum (NumPy, written here)."""

import jax.numpy as jnp
import numpy as np
import pytest

from optima_jax.errors import OptimaError
from optima_jax.updates.adam import adam_update


def layer(out=16, d=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((512, 8)) @ rng.standard_normal((8, d)) + 0.3 * rng.standard_normal((512, d))
    W = rng.standard_normal((out, d))
    H = X.T @ X
    metric = np.abs(W) * np.sqrt(np.diag(H))
    keep = np.ones_like(W, bool)
    np.put_along_axis(keep, np.argsort(metric, axis=1)[:, : d // 2], False, axis=1)
    return W, H, keep


def err(W, Wn, H):
    D = W - Wn
    return float(np.sum((D @ H) * D))


def exact(W, H, keep):
    Wn = np.zeros_like(W)
    for r in range(W.shape[0]):
        K, P = keep[r], ~keep[r]
        Wn[r, K] = W[r, K] + np.linalg.solve(H[np.ix_(K, K)], H[np.ix_(K, P)] @ W[r, P])
    return Wn


def test_adam_improves_and_respects_mask():
    W, H, keep = layer()
    Wn, info = adam_update(jnp.asarray(W, jnp.float32), jnp.asarray(keep), jnp.asarray(H, jnp.float32), steps=400)
    Wn = np.asarray(Wn, np.float64)
    assert np.all(Wn[~keep] == 0)
    e0, e, e_ls = err(W, W * keep, H), err(W, Wn, H), err(W, exact(W, H, keep), H)
    assert e < 0.9 * e0
    assert e >= e_ls * (1 - 1e-5)
    assert set(info["errors"]) == {1e-2, 1e-3, 1e-4, 1e-5}
    assert info["best_lr"] in info["errors"] and not info["fallback"]
    assert abs(info["error"] - e) <= 1e-3 * e and abs(info["init_error"] - e0) <= 1e-4 * e0
    assert info["error"] == min(info["errors"].values())
    assert isinstance(info["unstable"], bool) and all(isinstance(v, bool) for v in info["diverged"].values())


def test_adam_from_init_and_damping():
    W, H, keep = layer(seed=1)
    start = exact(W, H, keep)  # the optimum: adam cannot go below it
    Wn, info = adam_update(W.astype(np.float32), keep, H.astype(np.float32), steps=50, init=start, lrs=(1e-4,))
    assert abs(info["init_error"] - err(W, start, H)) <= 1e-3 * err(W, start, H)
    assert info["error"] >= err(W, start, H) * (1 - 1e-3)
    Wd, info_d = adam_update(W.astype(np.float32), keep, H.astype(np.float32), steps=200, damp=0.1)
    assert np.all(np.asarray(Wd)[~keep] == 0) and info_d["error"] < info_d["init_error"]


def test_adam_reports_divergence():
    W, H, keep = layer(seed=2)
    start = exact(W, H, keep)
    # from the optimum any lr large enough moves away: reported as diverged, and the start is kept
    Wn, info = adam_update(W.astype(np.float32), keep, H.astype(np.float32), steps=20, init=start, lrs=(1.0,))
    assert info["diverged"][1.0] and info["unstable"] and info["fallback"]
    np.testing.assert_allclose(np.asarray(Wn), (start * keep).astype(np.float32))


def test_adam_bad_shapes():
    W, H, keep = layer()
    with pytest.raises(OptimaError, match="keep_mask shape"):
        adam_update(W, keep[:, :10], H, where="model.layers.0.mlp.up_proj")
    with pytest.raises(OptimaError, match="H shape"):
        adam_update(W, keep, H[:10, :10])
