"""solve_rows / auto_damp_solve against a float64 NumPy direct solve written here."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from optima_jax.errors import OptimaError
from optima_jax.qp import auto_damp_solve, shared_preconditioner, solve_rows


def make_layer(n=96, out=40, T=400, seed=0, dead=3):
    """H from correlated, heavy-scaled activations with outlier and dead channels; Wanda-style 50% mask."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(T, n)) @ (np.eye(n) + 2 * rng.normal(size=(n, n)) / np.sqrt(n))
    scale = np.exp(rng.normal(size=n))
    scale[rng.choice(n, 3, replace=False)] *= 30
    X = X * scale
    X[:, rng.choice(n, dead, replace=False)] = 0
    H = (X.T @ X).astype(np.float32)
    W = (rng.normal(size=(out, n)) * 0.05).astype(np.float32)
    score = np.abs(W) * np.sqrt(np.diag(H))[None]
    mask = score > np.median(score, axis=1, keepdims=True)
    mask[0] = True  # a row with nothing pruned
    mask[1, : n - 2] = False  # a row keeping almost nothing
    return H, W, mask


def reference(H, W, mask, lam=0.0):
    """Float64 per-row direct solve; dead channels (diag 0) keep their weight (Δ = 0)."""
    H = np.asarray(H, np.float64)
    n = H.shape[0]
    Hd = H + lam * np.eye(n)
    dead = np.diag(H) <= 0
    Wn, obj = np.zeros(W.shape), np.zeros(W.shape[0])
    for j in range(W.shape[0]):
        f, s = mask[j] & ~dead, ~mask[j]
        d = np.zeros(n)
        d[s] = -W[j, s]
        if f.any():
            d[f] = np.linalg.solve(Hd[np.ix_(f, f)], -Hd[np.ix_(f, s)] @ d[s])
        Wn[j] = np.where(mask[j], W[j] + d, 0.0)
        obj[j] = 0.5 * d @ H @ d
    return Wn, obj


def row_objective(H, W, W_new):
    d = np.asarray(W_new, np.float64) - np.asarray(W, np.float64)
    return 0.5 * np.sum((d @ np.asarray(H, np.float64)) * d, axis=1)


def check_close_to_optimum(H, W, mask, res, tol, lam=0.0):
    """Per-row relative excess of ½Δᵀ(H+λI)Δ over the float64 optimum must stay below tol."""
    ref_w, _ = reference(H, W, mask, lam)
    Hd = np.asarray(H, np.float64) + lam * np.eye(H.shape[0])
    best = row_objective(Hd, W, ref_w)
    excess = (row_objective(Hd, W, res.weight) - best) / np.maximum(best, 1e-12 * best.max())
    assert np.all(np.asarray(res.weight)[~mask] == 0.0)
    assert excess.max() < tol, excess.max()
    return excess


@pytest.fixture(scope="module")
def layer():
    return make_layer()


@pytest.mark.parametrize("method", ["exact", "direct"])
def test_exact_matches_float64_optimum(layer, method):
    H, W, mask = layer
    res = solve_rows(H, W, mask, method=method, damp=0.0)
    check_close_to_optimum(H, W, mask, res, 1e-3)
    assert np.all(np.asarray(res.converged))
    # reported objective is ½ΔᵀHΔ of the returned weights
    np.testing.assert_allclose(np.asarray(res.objective), row_objective(H, W, res.weight), rtol=1e-3, atol=1e-6)
    # dead channels: kept entries unchanged
    dead = np.diag(H) <= 0
    np.testing.assert_array_equal(np.asarray(res.weight)[:, dead][mask[:, dead]], W[:, dead][mask[:, dead]])


@pytest.mark.parametrize("damp", [0.01, 0.5])
def test_exact_damped_matches_float64(layer, damp):
    H, W, mask = layer
    lam = damp * float(np.mean(np.diag(H).astype(np.float64)))
    res = solve_rows(H, W, mask, method="exact", damp=damp)
    assert res.damp_value == pytest.approx(lam, rel=1e-6)
    check_close_to_optimum(H, W, mask, res, 1e-4, lam)
    ref_w, _ = reference(H, W, mask, lam)
    np.testing.assert_allclose(np.asarray(res.weight), ref_w, atol=1e-4 * np.abs(ref_w).max())


@pytest.mark.parametrize("ref_damp, damp", [(1.0, 0.0), (0.0, 0.1), (0.1, 0.1)])
def test_shared_preconditioner_from_another_damp_reaches_the_optimum(layer, ref_damp, damp):
    """A preconditioner built at ref_damp and reused for a solve at damp (auto damping's grid) gives the
    float64 optimum at damp, not at ref_damp."""
    H, W, mask = layer
    lam = damp * float(np.mean(np.diag(H).astype(np.float64)))
    res = solve_rows(H, W, mask, damp=damp, shared=shared_preconditioner(H, ref_damp))
    check_close_to_optimum(H, W, mask, res, 1e-4, lam)
    assert np.all(np.asarray(res.converged))
    assert res.damp_value == pytest.approx(lam, rel=1e-6)


def test_exact_warm_start_and_jacobi(layer):
    """PCG from W_init: the optimum needs no iterations, a perturbed optimum fewer than a cold start."""
    H, W, mask = layer
    ref_w, _ = reference(H, W, mask)
    cold = solve_rows(H, W, mask, method="exact", damp=0.0)
    at_opt = solve_rows(H, W, mask, method="exact", W_init=ref_w.astype(np.float32), damp=0.0)
    check_close_to_optimum(H, W, mask, at_opt, 1e-5)
    assert np.asarray(at_opt.iterations).max() <= 2
    rng = np.random.default_rng(7)
    near = (ref_w + 1e-3 * np.abs(ref_w).max() * rng.normal(size=ref_w.shape)).astype(np.float32)
    warm = solve_rows(H, W, mask, method="exact", W_init=near, damp=0.0)
    check_close_to_optimum(H, W, mask, warm, 1e-3)
    assert np.asarray(warm.iterations).sum() < np.asarray(cold.iterations).sum()
    jac = solve_rows(H, W, mask, method="exact", preconditioner="jacobi", damp=0.0)
    check_close_to_optimum(H, W, mask, jac, 1e-3)


def test_rapdhg_tight_tolerance_approaches_optimum(layer):
    H, W, mask = layer
    res = solve_rows(H, W, mask, method="rapdhg_sum", eps_abs=1e-6, eps_rel=1e-6, damp=0.0)
    check_close_to_optimum(H, W, mask, res, 1e-3)
    assert np.all(np.asarray(res.converged))


def test_rapdhg_loose_tolerance_rows_stop_on_their_own(layer):
    H, W, mask = layer
    res = solve_rows(H, W, mask, method="rapdhg_sum", damp=0.0)  # paper defaults: 1e-2
    its = np.asarray(res.iterations)
    assert np.all(np.asarray(res.converged))
    assert np.all(np.asarray(res.weight)[~mask] == 0.0)
    assert its.min() < its.max()  # per-row termination
    _, ref_obj = reference(H, W, mask)
    assert np.all(row_objective(H, W, res.weight) >= ref_obj - 1e-4 * ref_obj.max())


def test_rapdhg_rows_leave_and_join_the_batch_without_changing_their_iterates():
    """The segmented rAPDHG (finished rows leave, waiting rows take their slots, the batch shrinks) gives
    every row exactly what one vmapped solve_dense gives it: same weights, same iteration counts."""
    import jax
    import jax.numpy as jnp
    from optima_jax.qp import solve_dense
    from optima_jax.qp.problem import TerminationStatus
    from optima_jax.qp.rapdhg import PdhgConfig

    H, W, mask = make_layer(n=40, out=29, T=160, seed=5)
    cfg = PdhgConfig(eps_abs=1e-4, eps_rel=1e-4, iteration_limit=100_000)
    Hs = (0.5 * (H + H.T)).astype(np.float32)
    fixed = np.where(mask, 0.0, -W).astype(np.float32)
    live = np.diag(Hs) > 0
    free = mask & live[None, :]
    n = Hs.shape[0]

    def one(f, d):
        lo, hi = jnp.where(f, -jnp.inf, d), jnp.where(f, jnp.inf, d)
        return solve_dense(
            jnp.asarray(Hs),
            jnp.zeros(n),
            jnp.zeros((0, n)),
            jnp.zeros(0),
            lo,
            hi,
            jnp.zeros(0, bool),
            0.0,
            d,
            jnp.zeros(0),
            cfg,
        )

    x, _, status, its, _ = jax.jit(jax.vmap(one))(jnp.asarray(free), jnp.asarray(fixed))
    ref = np.where(mask, W + np.asarray(x), 0.0)
    assert len(set(np.asarray(its).tolist())) >= 3  # rows finish at different iterations
    for kw in (dict(), dict(memory_budget_bytes=4 * 48 * n * 5, rapdhg_segment=64), dict(rapdhg_segment=7)):
        r = solve_rows(H, W, mask, method="rapdhg_sum", eps_abs=1e-4, eps_rel=1e-4, damp=0.0, **kw)
        np.testing.assert_allclose(np.asarray(r.weight), ref, rtol=1e-6, atol=1e-7, err_msg=str(kw))
        np.testing.assert_array_equal(np.asarray(r.iterations), np.asarray(its), err_msg=str(kw))
        np.testing.assert_array_equal(
            np.asarray(r.converged), np.asarray(status) == int(TerminationStatus.OPTIMAL), err_msg=str(kw)
        )
    with pytest.raises(OptimaError, match="rapdhg_segment must be"):
        solve_rows(H, W, mask, method="rapdhg_sum", rapdhg_segment=0, damp=0.0)


def test_batching_by_memory_budget_and_warm_start(layer):
    H, W, mask = layer
    full = solve_rows(H, W, mask, method="exact", damp=0.0)
    small = solve_rows(
        H, W, mask, method="exact", memory_budget_bytes=200_000, damp=0.0
    )  # many small batches + padding
    np.testing.assert_allclose(np.asarray(small.weight), np.asarray(full.weight), rtol=1e-5, atol=1e-7)
    ref_w, _ = reference(H, W, mask)
    warm = solve_rows(
        H, W, mask, method="rapdhg_sum", eps_abs=1e-6, eps_rel=1e-6, W_init=ref_w.astype(np.float32), damp=0.0
    )
    cold = solve_rows(H, W, mask, method="rapdhg_sum", eps_abs=1e-6, eps_rel=1e-6, damp=0.0)
    assert np.asarray(warm.iterations).sum() < np.asarray(cold.iterations).sum()


def test_bad_inputs_raise_clear_errors(layer):
    H, W, mask = layer
    Hbad = H.copy()
    Hbad[3, 4] = np.nan
    with pytest.raises(OptimaError, match="H has 1 non-finite.*layers.0.q"):
        solve_rows(Hbad, W, mask, where="layers.0.q", damp=0.0)
    Wbad = W.copy()
    Wbad[0, 0] = np.inf
    with pytest.raises(OptimaError, match="W has 1 non-finite"):
        solve_rows(H, Wbad, mask, damp=0.0)
    with pytest.raises(OptimaError, match="keep_mask shape"):
        solve_rows(H, W, mask[:, :-1], damp=0.0)
    with pytest.raises(OptimaError, match="boolean"):
        solve_rows(H, W, mask.astype(np.float32), damp=0.0)
    with pytest.raises(OptimaError, match="unknown solve method"):
        solve_rows(H, W, mask, method="cg", damp=0.0)
    with pytest.raises(OptimaError, match="unknown preconditioner"):
        solve_rows(H, W, mask, preconditioner="ilu", damp=0.0)


@pytest.mark.parametrize("method", ["exact", "direct"])
def test_singular_hessian(method):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 96)).astype(np.float32)  # 60 tokens < 96 inputs: rank-deficient H
    H = X.T @ X  # (same shapes as `layer`: no recompilation)
    W = rng.normal(size=(40, 96)).astype(np.float32)
    mask = rng.random((40, 96)) > 0.5
    res = solve_rows(H, W, mask, method=method, damp=0.0)
    assert np.all(np.isfinite(np.asarray(res.weight)))
    assert np.all(np.asarray(res.weight)[~mask] == 0.0)
    # the objective can reach ~0 (H has a 36-dim null space): it must not exceed the mask-only objective
    base = row_objective(H, W, W * mask)
    assert np.all(np.asarray(res.objective) <= base + 1e-5)
    # and it reaches the float64 minimum (least-squares solution of the singular kept system)
    H64 = H.astype(np.float64)
    best = np.zeros(40)
    for j in range(40):
        f, s = mask[j], ~mask[j]
        d = np.zeros(96)
        d[s] = -W[j, s]
        d[f] = np.linalg.lstsq(H64[np.ix_(f, f)], -H64[np.ix_(f, s)] @ d[s], rcond=None)[0]
        best[j] = 0.5 * d @ H64 @ d
    assert np.all(row_objective(H, W, res.weight) <= best + 1e-3 * base)


def _reference_val_errors(H, W, mask, Hv, grid):
    errs = []
    for g in grid:
        lam = g * float(np.mean(np.diag(H).astype(np.float64)))
        ref_w, _ = reference(H, W, mask, lam)
        d = ref_w - W
        errs.append(float(np.sum((d @ Hv.astype(np.float64)) * d)))
    return errs


def test_auto_damp_picks_lowest_validation_error():
    H, W, mask = make_layer(seed=1)
    Hv, _, _ = make_layer(seed=2)
    grid = (0.0, 0.01, 0.1, 1.0)
    errs = _reference_val_errors(H, W, mask, Hv, grid)
    out = auto_damp_solve(H, W, mask, Hv, grid, early_stop=False, row_fraction=1.0)
    assert out.rows_used == 40
    np.testing.assert_allclose(out.val_errors, errs, rtol=1e-3)
    assert out.damp == grid[int(np.argmin(errs))]
    assert out.val_error == pytest.approx(min(errs), rel=1e-3)


@pytest.mark.parametrize("seed", [1, 3, 5])
def test_auto_damp_early_stop_scans_down_until_the_error_rises(seed):
    """Scanned from the largest damp down, stopped at the first rise: the values it evaluates match the
    float64 reference, the ones after the stop are None, and the pick is the best of those evaluated."""
    H, W, mask = make_layer(seed=seed)
    Hv, _, _ = make_layer(seed=seed + 1)
    grid = (0.0, 0.01, 0.1, 1.0, 10.0)
    errs = _reference_val_errors(H, W, mask, Hv, grid)
    expect, best = [None] * len(grid), None
    for i in sorted(range(len(grid)), key=lambda i: -grid[i]):
        expect[i] = errs[i]
        if best is not None and errs[i] >= errs[best]:
            break
        best = i
    out = auto_damp_solve(H, W, mask, Hv, grid, row_fraction=1.0, grid_rtol=1e-6)
    assert [e is None for e in out.val_errors] == [e is None for e in expect]
    np.testing.assert_allclose(
        [e for e in out.val_errors if e is not None], [e for e in expect if e is not None], rtol=1e-3
    )
    assert out.damp == grid[best]


def test_auto_damp_on_a_row_subset_solves_every_row_at_the_chosen_damp():
    """With a subset for the grid (and its looser grid_rtol), the returned weights are the full solve at the
    chosen damp: equal to the float64 reference to the caller's rtol."""
    H, W, mask = make_layer(seed=7, out=256)
    Hv, _, _ = make_layer(seed=8, out=256)
    out = auto_damp_solve(H, W, mask, Hv, (0.0, 0.1, 1.0), row_fraction=0.1, min_rows=8)
    assert out.rows_used == 26
    lam = out.damp * float(np.mean(np.diag(H).astype(np.float64)))
    check_close_to_optimum(H, W, mask, out.result, 1e-4, lam=lam)
    assert bool(np.all(np.asarray(out.result.converged)))


REAL_LAYERS = ["0.self_attn.q_proj", "0.self_attn.o_proj", "1.mlp.up_proj", "1.mlp.down_proj"]


@pytest.mark.slow
@pytest.mark.parametrize("layer", REAL_LAYERS)
def test_exact_on_captured_real_layers(layer):
    from real_layers import real_layer_paths

    z = np.load(next(p for p in real_layer_paths() if p.name.endswith(f"__{layer}.npz")))
    rows = np.arange(0, z["W"].shape[0], max(1, z["W"].shape[0] // 32))
    H, W, mask = z["H"], z["W"][rows], z["keep_mask"][rows].astype(bool)
    res = solve_rows(H, W, mask, method="exact", damp=0.0)
    check_close_to_optimum(H, W, mask, res, 1e-3)
    assert np.all(np.asarray(res.converged))


def test_mesh_of_8_devices_equals_one_device(tmp_path):
    script = textwrap.dedent(
        """
        import os, numpy as np, jax
        from jax.sharding import Mesh
        import sys; sys.path.insert(0, %r)
        from test_solve_rows import make_layer
        from optima_jax.qp import solve_rows
        assert len(jax.devices()) == 8
        H, W, mask = make_layer(n=48, out=21, T=200, seed=4)
        mesh = Mesh(np.array(jax.devices()), ("rows",))
        for method, kw in (("exact", {}), ("rapdhg_sum", dict(eps_abs=1e-4, eps_rel=1e-4)), ("rapdhg", dict(n_tokens=200))):
            a = solve_rows(H, W, mask, method=method, damp=0.0, **kw)
            b = solve_rows(H, W, mask, method=method, mesh=mesh, axis_name="rows", damp=0.0, **kw)
            np.testing.assert_allclose(np.asarray(a.weight), np.asarray(b.weight), rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(np.asarray(a.converged), np.asarray(b.converged))
        print("OK")
    """
        % os.path.dirname(__file__)
    )
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")]
        ),
    )
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-3000:]
