"""optima_jax.qp's MPAX-compatible interface against the mpax package (0.2.4) itself."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp

mpax = pytest.importorskip("mpax")
from optima_jax import qp

TOL = 1e-6
N, M_EQ, M_IN = 12, 1, 2


def _batch(seed=0, per_kind=2):
    """Random QPs sharing Q (mpax under vmap needs an unbatched Q), mixing three kinds:
    box only (mpax gets an all-zero dummy equality row and a far-inactive dummy inequality),
    box + one equality, box + two inequalities."""
    rng = np.random.default_rng(seed)
    Mq = rng.normal(size=(N, N))
    Q = Mq @ Mq.T / N + 0.05 * np.eye(N)
    rows = []
    for kind in ("box", "eq", "ineq"):
        for _ in range(per_kind):
            c = rng.normal(size=N)
            x_in = rng.uniform(-0.5, 0.5, N)
            A = rng.normal(size=(M_EQ, N)) if kind == "eq" else np.zeros((M_EQ, N))
            b = A @ x_in
            G = rng.normal(size=(M_IN, N))
            h = G @ x_in - (0.3 if kind == "ineq" else 1e3)
            l, u = -np.ones(N), np.ones(N)
            rows.append((c, A, b, G, h, l, u))
    stack = [jnp.asarray(np.stack(t), jnp.float32) for t in zip(*rows)]
    return jnp.asarray(Q, jnp.float32), stack


def _kkt_violation(Q, c, A, b, G, h, l, u, x, y):
    """Float64 KKT residual of (x, y) for min ½xᵀQx+cᵀx, Ax=b, Gx≥h, l≤x≤u (independent check)."""
    Q, c, A, b, G, h, l, u, x, y = (np.asarray(t, np.float64) for t in (Q, c, A, b, G, h, l, u, x, y))
    K = np.concatenate([A, G])
    g = Q @ x + c - K.T @ y
    rc = np.where(x <= l + 1e-4, np.minimum(g, 0), np.where(x >= u - 1e-4, np.maximum(g, 0), g))
    feas = max(
        np.abs(A @ x - b).max(initial=0),
        np.maximum(h - G @ x, 0).max(initial=0),
        np.maximum(l - x, 0).max(),
        np.maximum(x - u, 0).max(),
    )
    return max(np.abs(rc).max(), feas)


@pytest.fixture(scope="module")
def ours_solved():
    Q, (c, A, b, G, h, l, u) = _batch()

    def ours(c, A, b, G, h, l, u):
        return qp.raPDHG(eps_abs=TOL, eps_rel=TOL).optimize(
            qp.create_qp(Q, c, A, b, G, h, l, u, use_sparse_matrix=False)
        )

    args = (c, A, b, G, h, l, u)
    return Q, args, jax.vmap(ours)(*args)


@pytest.fixture(scope="module")
def solved(ours_solved):
    Q, args, r_ours = ours_solved

    def theirs(c, A, b, G, h, l, u):
        return mpax.raPDHG(eps_abs=TOL, eps_rel=TOL).optimize(
            mpax.create_qp(Q, c, A, b, G, h, l, u, use_sparse_matrix=False)
        )

    return Q, args, r_ours, jax.vmap(theirs)(*args)


def test_vmap_solutions_satisfy_kkt(ours_solved):
    Q, args, r = ours_solved
    assert np.all(np.asarray(r.termination_status) == int(qp.TerminationStatus.OPTIMAL))
    x = np.asarray(r.primal_solution)
    for i in range(x.shape[0]):
        kkt = _kkt_violation(Q, *(a[i] for a in args), x[i], np.asarray(r.dual_solution)[i])
        assert kkt < 1e-3, (i, kkt)


@pytest.mark.slow  # compiling mpax's solver under vmap takes ~1-3 minutes on CPU
def test_vmap_solutions_match_mpax(solved):
    Q, args, r_ours, r_mpax = solved
    assert np.all(np.asarray(r_ours.termination_status) == int(qp.TerminationStatus.OPTIMAL))
    assert np.all(np.asarray(r_mpax.termination_status) == int(mpax.utils.TerminationStatus.OPTIMAL))
    x_o, x_m = np.asarray(r_ours.primal_solution), np.asarray(r_mpax.primal_solution)
    np.testing.assert_allclose(x_o, x_m, atol=2e-3)
    np.testing.assert_allclose(
        np.asarray(r_ours.primal_objective), np.asarray(r_mpax.primal_objective), rtol=1e-4, atol=1e-4
    )
    for i in range(x_o.shape[0]):
        kkt = _kkt_violation(Q, *(a[i] for a in args), x_o[i], np.asarray(r_ours.dual_solution)[i])
        assert kkt < 1e-3, (i, kkt)


def test_box_only_without_constraint_rows_matches_dummy_row_version(ours_solved):
    """Problem 0 of the batch is box-only with dummy rows (as the reference OPTIMA code gives mpax)."""
    Q, args, r_dummy = ours_solved
    c, _, _, _, _, l, u = (a[0] for a in args)
    e = jnp.zeros((0, N), jnp.float32)
    r = qp.raPDHG(eps_abs=TOL, eps_rel=TOL).optimize(qp.create_qp(Q, c, e, jnp.zeros(0), e, jnp.zeros(0), l, u))
    assert int(r.termination_status) == int(qp.TerminationStatus.OPTIMAL)
    assert r.dual_solution.shape == (0,)
    np.testing.assert_allclose(np.asarray(r.primal_solution), np.asarray(r_dummy.primal_solution[0]), atol=2e-3)
    assert _kkt_violation(Q, c, e, jnp.zeros(0), e, jnp.zeros(0), l, u, r.primal_solution, jnp.zeros(0)) < 1e-3


@pytest.mark.parametrize("sparse", [True, False])
def test_problems_built_by_mpax_create_qp(ours_solved, sparse):
    Q, args, r_ours = ours_solved
    i = 2  # an equality-constrained problem
    a = [t[i] for t in args]
    prob = mpax.create_qp(Q, *a, use_sparse_matrix=sparse)
    r = qp.raPDHG(eps_abs=TOL, eps_rel=TOL).optimize(prob)
    assert int(r.termination_status) == int(qp.TerminationStatus.OPTIMAL)
    np.testing.assert_allclose(np.asarray(r.primal_solution), np.asarray(r_ours.primal_solution[i]), atol=1e-4)


def test_result_fields_and_status_values_match_mpax():
    assert set(mpax.utils.SaddlePointOutput._fields) == set(qp.SaddlePointOutput._fields)
    for s in mpax.utils.TerminationStatus:
        assert int(getattr(qp.TerminationStatus, s.name)) == int(s)
    fields = {f for f in mpax.utils.QuadraticProgrammingProblem.__dataclass_fields__}
    assert fields == set(qp.QuadraticProgrammingProblem.__dataclass_fields__)


def test_iteration_limit_status_and_warm_start(ours_solved):
    Q, args, r_ours = ours_solved
    a = [t[4] for t in args]
    prob = qp.create_qp(Q, *a, use_sparse_matrix=False)
    r = qp.raPDHG(eps_abs=1e-12, eps_rel=1e-12, iteration_limit=20).optimize(prob)
    assert int(r.termination_status) == int(qp.TerminationStatus.ITERATION_LIMIT)
    assert int(r.iteration_count) >= 20
    warm = qp.raPDHG(eps_abs=TOL, eps_rel=TOL, warm_start=True).optimize(
        prob, initial_primal_solution=r_ours.primal_solution[4], initial_dual_solution=r_ours.dual_solution[4]
    )
    cold = qp.raPDHG(eps_abs=TOL, eps_rel=TOL).optimize(prob)
    assert int(warm.iteration_count) < int(cold.iteration_count)
    np.testing.assert_allclose(np.asarray(warm.primal_solution), np.asarray(cold.primal_solution), atol=1e-3)
