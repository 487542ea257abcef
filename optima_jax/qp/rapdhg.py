"""Restarted accelerated PDHG (raPDHG) for convex QPs, written for this project.

Algorithm (the same scheme as MPAX's raPDHG for QPs; see docs/solver.md):
  * preconditioning: `l_inf_ruiz_iterations` of Ruiz equilibration of [[Q, Aᵀ], [A, 0]], optional
    l2 row/column rescaling, then Pock–Chambolle rescaling with exponent `pock_chambolle_alpha`;
  * accelerated PDHG with momentum 1/(1 + k/2) on the Q-gradient and extrapolation k/(k+1) on the dual,
    step size 0.99 (2+k) / (‖Q‖/ω + sqrt((2+k)²‖A‖² + ‖Q‖²/ω²)) (never growing faster than (1+1/k));
  * weighted averaging of iterates (weights = step sizes);
  * adaptive restarts on a relative KKT error (restart to the average or the current iterate,
    whichever is smaller), with the primal weight ω updated from the distances moved since the last restart;
  * termination on the *unscaled average iterate* with MPAX's criterion: relative primal residual,
    relative dual residual and relative gap all below eps_rel, where relative = abs / (eps_abs/eps_rel + scale).
The core is a pure function; under `jax.vmap` each problem terminates on its own.
"""

from __future__ import annotations

import dataclasses
import math
import timeit
from typing import NamedTuple

import jax
import jax.numpy as jnp

from optima_jax.qp.problem import SaddlePointOutput, TerminationStatus, to_dense


class PdhgConfig(NamedTuple):
    """Static (hashable) solver settings."""

    eps_abs: float = 1e-4
    eps_rel: float = 1e-4
    iteration_limit: int = 2**31 - 1
    termination_evaluation_frequency: int = 64
    optimality_norm: float = math.inf
    l_inf_ruiz_iterations: int = 10
    l2_norm_rescaling: bool = False
    pock_chambolle_alpha: float | None = 1.0
    primal_importance: float = 1.0
    scale_invariant_initial_primal_weight: bool = True
    restart_to_current: bool = True
    fixed_restart_frequency: int = 0  # 0 = adaptive restarts
    artificial_restart_threshold: float = 0.36
    sufficient_reduction_for_restart: float = 0.2
    necessary_reduction_for_restart: float = 0.8
    primal_weight_update_smoothing: float = 0.2
    initial_iterations: int = 10
    power_iterations: int = 100
    # MPAX 0.2.4's main loop checks termination, then still runs the restart check and one more block of
    # termination_evaluation_frequency steps before it stops, and returns that block's average (the
    # convergence information stays that of the checked point). True reproduces it.
    continue_after_optimal: bool = False


def _mm(a, b):
    """Products in true float32: the default precision is TF32 on recent GPUs (bf16 passes on TPU), which
    stalls the tight tolerances; CPU computes the same either way."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _norm(v, ord_):
    if v.shape[-1] == 0:
        return jnp.zeros(v.shape[:-1], v.dtype)
    if ord_ == math.inf:
        return jnp.max(jnp.abs(v), axis=-1)
    return jnp.sqrt(jnp.sum(v * v, axis=-1))


def _colmax(M):
    return jnp.max(jnp.abs(M), axis=0) if M.shape[0] else jnp.zeros(M.shape[1], M.dtype)


def _rowmax(M):
    return jnp.max(jnp.abs(M), axis=1) if M.shape[1] else jnp.zeros(M.shape[0], M.dtype)


def _safe(v):
    return jnp.where(v == 0, 1.0, v)


def rescale(Q, A, cfg: PdhgConfig):
    """Diagonal rescaling factors (E for constraints (m,), D for variables (n,)).

    The scaled problem uses Q̃ = Q/(D Dᵀ), Ã = A/(E Dᵀ), x̃ = D x, ỹ = E y.
    """
    m, n = A.shape
    E = jnp.ones(m, Q.dtype)
    D = jnp.ones(n, Q.dtype)
    Qs, As = Q, A

    def apply(Qs, As, e, d):
        return Qs / d[:, None] / d[None, :], As / e[:, None] / d[None, :]

    for _ in range(cfg.l_inf_ruiz_iterations):
        d = _safe(jnp.sqrt(jnp.maximum(_colmax(As), _colmax(Qs))))
        e = _safe(jnp.sqrt(_rowmax(As)))
        Qs, As = apply(Qs, As, e, d)
        E, D = E * e, D * d
    if cfg.l2_norm_rescaling:
        d = _safe(jnp.sqrt(jnp.sqrt(jnp.sum(As**2, 0) + jnp.sum(Qs**2, 0))))
        e = _safe(jnp.sqrt(jnp.sqrt(jnp.sum(As**2, 1))))
        Qs, As = apply(Qs, As, e, d)
        E, D = E * e, D * d
    if cfg.pock_chambolle_alpha is not None:
        a = cfg.pock_chambolle_alpha
        d = _safe(jnp.sqrt(jnp.sum(jnp.abs(As) ** (2 - a), 0) + jnp.sum(jnp.abs(Qs) ** (2 - a), 0)))
        e = _safe(jnp.sqrt(jnp.sum(jnp.abs(As) ** a, 1)))
        Qs, As = apply(Qs, As, e, d)
        E, D = E * e, D * d
    return Qs, As, E, D


def spectral_norm(M, iters: int, symmetric: bool):
    """Largest singular value of M by power iteration from a fixed start (0 for an empty M)."""
    if M.size == 0:
        return jnp.zeros((), M.dtype)
    n = M.shape[1]
    x0 = jnp.ones(n, M.dtype) + 0.01 * jnp.cos(jnp.arange(n, dtype=M.dtype) * 1.7)

    def op(x):
        return _mm(M, x) if symmetric else _mm(M.T, _mm(M, x))

    def body(_, x):
        y = op(x)
        return y / jnp.maximum(jnp.linalg.norm(y), jnp.finfo(M.dtype).tiny)

    x = jax.lax.fori_loop(0, iters, body, x0 / jnp.linalg.norm(x0))
    val = jnp.linalg.norm(op(x))
    return val if symmetric else jnp.sqrt(val)


class _Point(NamedTuple):
    x: jax.Array
    y: jax.Array
    Ax: jax.Array
    ATy: jax.Array
    Qx: jax.Array


class _State(NamedTuple):
    cur: _Point
    avg: _Point
    last: _Point  # restart point
    k: jax.Array  # iterations since the last restart
    wsum: jax.Array  # sum of step sizes since the last restart
    step: jax.Array
    omega: jax.Array  # primal weight
    last_ratio: jax.Array  # KKT reduction ratio at the last restart
    it: jax.Array  # total iterations
    done: jax.Array
    status: jax.Array
    out: tuple  # convergence information at the termination check


class _Problem(NamedTuple):
    Q: jax.Array
    c: jax.Array
    A: jax.Array
    b: jax.Array
    l: jax.Array
    u: jax.Array
    eq: jax.Array
    const: jax.Array


def _convergence(p: _Problem, pt: _Point, eps_ratio, ord_):
    """MPAX's convergence information for a point of the (unscaled) problem `p`."""
    x, y, Ax, ATy, Qx = pt
    lo_v = jnp.maximum(p.l - x, 0.0)
    up_v = jnp.maximum(x - p.u, 0.0)
    con_v = jnp.where(p.eq, p.b - Ax, jnp.maximum(p.b - Ax, 0.0))
    primal_obj = p.const + _mm(p.c, x) + 0.5 * _mm(x, Qx)
    primal_res = _norm(jnp.concatenate([con_v, lo_v, up_v]), ord_)
    grad = p.c - ATy + Qx
    rc = jnp.maximum(grad, 0.0) * jnp.isfinite(p.l) + jnp.minimum(grad, 0.0) * jnp.isfinite(p.u)
    rc_viol = grad - rc
    bound_term = jnp.sum(
        jnp.where(
            rc > 0,
            jnp.where(jnp.isfinite(p.l), p.l, 0.0) * rc,
            jnp.where(rc < 0, jnp.where(jnp.isfinite(p.u), p.u, 0.0) * rc, 0.0),
        )
    )
    dual_obj = _mm(p.b, y) + p.const - 0.5 * _mm(x, Qx) + bound_term
    dual_v = jnp.where(p.eq, 0.0, jnp.maximum(-y, 0.0))
    dual_res = _norm(jnp.concatenate([dual_v, rc_viol]), ord_)
    rel_primal = primal_res / (eps_ratio + jnp.maximum(_norm(p.b, ord_), _norm(Ax, ord_)))
    rel_dual = dual_res / (eps_ratio + jnp.maximum(jnp.maximum(_norm(p.c, ord_), _norm(Qx, ord_)), _norm(ATy, ord_)))
    gap = jnp.abs(primal_obj - dual_obj)
    rel_gap = gap / (eps_ratio + jnp.maximum(jnp.abs(primal_obj), jnp.abs(dual_obj)))
    corrected = jnp.where(dual_res == 0.0, dual_obj, -jnp.inf)
    return (primal_obj, dual_obj, corrected, primal_res, dual_res, rel_primal, rel_dual, gap, rel_gap)


def _kkt(p: _Problem, pt: _Point, omega, ord_):
    """Weighted relative KKT error used for restart decisions (scaled problem)."""
    ci = _convergence(p, pt, 1.0, ord_)
    return jnp.sqrt((omega * ci[5]) ** 2 + (ci[6] / omega) ** 2 + ci[8] ** 2)


def _zero_point(n, m, dtype):
    z, w = jnp.zeros(n, dtype), jnp.zeros(m, dtype)
    return _Point(z, w, w, z, z)


class _Setup(NamedTuple):
    """Everything `start`/`advance`/`finish` derive from the problem data (recomputed, deterministic)."""

    orig: _Problem
    sp: _Problem  # the rescaled problem
    D: jax.Array
    E: jax.Array
    normQ: jax.Array
    normA: jax.Array
    omega0: jax.Array
    smoothing: jax.Array


def _setup(Q, c, A, b, l, u, eq, const, cfg: PdhgConfig) -> _Setup:
    dtype = jnp.result_type(Q.dtype, jnp.float32)
    Q, c, A, b, l, u = (jnp.asarray(t, dtype) for t in (Q, c, A, b, l, u))
    m = A.shape[0]
    const = jnp.asarray(const, dtype)
    orig = _Problem(Q, c, A, b, l, u, eq, const)
    Qs, As, E, D = rescale(Q, A, cfg)
    sp = _Problem(Qs, c / D, As, b / E, l * D, u * D, eq, const)
    normQ = spectral_norm(Qs, cfg.power_iterations, True)
    normA = spectral_norm(As, cfg.power_iterations, False)
    if cfg.scale_invariant_initial_primal_weight:
        cn, bn = jnp.linalg.norm(sp.c), jnp.linalg.norm(sp.b) if m else jnp.zeros((), dtype)
        omega0 = jnp.where(
            (cn > 0) & (bn > 0), cfg.primal_importance * cn / jnp.where(bn > 0, bn, 1.0), cfg.primal_importance
        )
    else:
        omega0 = jnp.asarray(cfg.primal_importance, dtype)
    smoothing = jnp.where(normQ > 0, cfg.primal_weight_update_smoothing, 0.5)
    return _Setup(orig, sp, D, E, normQ, normA, jnp.asarray(omega0, dtype), smoothing)


def _steps(su: _Setup, cfg: PdhgConfig):
    """The algorithm's three moves on a state: one PDHG step, a restart check, a termination check."""
    sp, normQ, normA, D, E = su.sp, su.normQ, su.normA, su.D, su.E
    m, n = sp.A.shape
    dtype = sp.Q.dtype
    ord_ = cfg.optimality_norm
    eps_ratio = cfg.eps_abs / cfg.eps_rel

    def take_step(s: _State) -> _State:
        kf = s.k.astype(dtype)
        nxt = 0.99 * (2 + kf) / (normQ / s.omega + jnp.sqrt((2 + kf) ** 2 * normA**2 + normQ**2 / s.omega**2))
        limit = jnp.where(s.k > 0, (1 + 1 / jnp.maximum(kf, 1.0)) * s.step, jnp.inf)
        eta = jnp.minimum(nxt, limit)
        beta = 1.0 / (1.0 + kf / 2.0)
        cur = s.cur
        g = sp.c - cur.ATy + (1 - beta) * s.avg.Qx + beta * cur.Qx
        x = jnp.clip(cur.x - (eta / s.omega) * g, sp.l, sp.u)
        dAx = _mm(sp.A, x - cur.x)
        theta = kf / (kf + 1.0)
        y = cur.y + (s.omega * eta) * (sp.b - (1 + theta) * dAx - cur.Ax)
        y = jnp.where(sp.eq, y, jnp.maximum(y, 0.0))
        new = _Point(x, y, cur.Ax + dAx, _mm(sp.A.T, y), _mm(sp.Q, x))
        r = eta / (s.wsum + eta)
        avg = jax.tree_util.tree_map(lambda a, b_: a + r * (b_ - a), s.avg, new)
        return s._replace(cur=new, avg=avg, k=s.k + 1, wsum=s.wsum + eta, step=eta, it=s.it + 1)

    def maybe_restart(s: _State) -> _State:
        kkt_cur = _kkt(sp, s.cur, s.omega, ord_)
        kkt_avg = _kkt(sp, s.avg, s.omega, ord_)
        to_avg = (kkt_cur >= kkt_avg) if cfg.restart_to_current else jnp.asarray(True)
        cand_kkt = jnp.where(to_avg, kkt_avg, kkt_cur)
        kkt_last = _kkt(sp, s.last, s.omega, ord_)
        ratio = jnp.where(kkt_last > jnp.finfo(dtype).eps, cand_kkt / kkt_last, 1.0)
        if cfg.fixed_restart_frequency > 0:
            adaptive = s.k >= cfg.fixed_restart_frequency
        else:
            adaptive = (ratio < cfg.necessary_reduction_for_restart) & (
                (ratio < cfg.sufficient_reduction_for_restart) | (ratio > s.last_ratio)
            )
        artificial = s.k.astype(dtype) >= cfg.artificial_restart_threshold * s.it.astype(dtype)
        do = (s.k > 0) & (adaptive | artificial)
        cand = jax.tree_util.tree_map(lambda a, b_: jnp.where(to_avg, a, b_), s.avg, s.cur)
        dx = jnp.linalg.norm(s.avg.x - s.last.x)
        dy = jnp.linalg.norm(s.avg.y - s.last.y) if m else jnp.zeros((), dtype)
        tiny = jnp.finfo(dtype).eps
        ok = (dx > tiny) & (dy > tiny)
        new_omega = jnp.where(
            ok,
            jnp.exp(
                su.smoothing * jnp.log(jnp.where(ok, dy / jnp.where(ok, dx, 1.0), 1.0))
                + (1 - su.smoothing) * jnp.log(s.omega)
            ),
            s.omega,
        )
        zero = _zero_point(n, m, dtype)
        restarted = s._replace(
            cur=cand,
            avg=zero,
            last=cand,
            k=jnp.zeros_like(s.k),
            wsum=jnp.zeros_like(s.wsum),
            omega=new_omega,
            last_ratio=ratio,
        )
        return jax.tree_util.tree_map(lambda a, b_: jnp.where(do, a, b_), restarted, s)

    def check(s: _State) -> _State:
        ci = _convergence(su.orig, _unscale(s.avg, D, E), eps_ratio, ord_)
        optimal = (ci[6] < cfg.eps_rel) & (ci[5] < cfg.eps_rel) & (ci[8] < cfg.eps_rel)
        finite = jnp.all(jnp.isfinite(s.avg.x)) & jnp.all(jnp.isfinite(s.avg.y))
        limit = s.it >= cfg.iteration_limit
        status = jnp.where(
            optimal,
            int(TerminationStatus.OPTIMAL),
            jnp.where(
                ~finite,
                int(TerminationStatus.NUMERICAL_ERROR),
                jnp.where(limit, int(TerminationStatus.ITERATION_LIMIT), s.status),
            ),
        )
        return s._replace(done=optimal | limit | ~finite, status=status.astype(jnp.int32), out=ci)

    return take_step, maybe_restart, check


def _unscale(pt: _Point, D, E) -> _Point:
    return _Point(pt.x / D, pt.y / E, pt.Ax * E, pt.ATy * D, pt.Qx * D)


def start(Q, c, A, b, l, u, eq, const, x0, y0, cfg: PdhgConfig) -> _State:
    """The state after raPDHG's initial iterations (a restart check before every step) from (x0, y0).

    With `advance` and `finish` this is `solve_dense` cut into pieces, so a caller can run a batch of
    problems in segments and drop the finished ones in between (the iterates are the same)."""
    su = _setup(Q, c, A, b, l, u, eq, const, cfg)
    dtype = su.sp.Q.dtype
    m, n = su.sp.A.shape
    sp = su.sp
    x = jnp.clip(jnp.asarray(x0, dtype) * su.D, sp.l, sp.u)
    y = jnp.asarray(y0, dtype) * su.E
    p0 = _Point(x, y, _mm(sp.A, x), _mm(sp.A.T, y), _mm(sp.Q, x))
    nan = jnp.asarray(jnp.nan, dtype)
    st = _State(
        cur=p0,
        avg=p0,
        last=p0,
        k=jnp.zeros((), jnp.int32),
        wsum=jnp.zeros((), dtype),
        step=jnp.ones((), dtype),
        omega=su.omega0,
        last_ratio=jnp.ones((), dtype),
        it=jnp.zeros((), jnp.int32),
        done=jnp.zeros((), bool),
        status=jnp.asarray(int(TerminationStatus.UNSPECIFIED), jnp.int32),
        out=(nan,) * 9,
    )
    take_step, maybe_restart, _ = _steps(su, cfg)
    n_init = min(cfg.initial_iterations, max(cfg.iteration_limit, 0))
    return jax.lax.fori_loop(0, n_init, lambda i, s: take_step(maybe_restart(s)), st)


def advance(Q, c, A, b, l, u, eq, const, st: _State, cfg: PdhgConfig, until=2**31 - 1) -> _State:
    """Run raPDHG's main loop on `st` (from `start` or a previous `advance`) until it terminates or its
    iteration count reaches `until` (checked between blocks of termination_evaluation_frequency steps)."""
    su = _setup(Q, c, A, b, l, u, eq, const, cfg)
    take_step, maybe_restart, check = _steps(su, cfg)
    freq = cfg.termination_evaluation_frequency

    def body(s):
        s = check(s)

        def go(s):
            s = maybe_restart(s)
            steps = jnp.minimum(freq, jnp.maximum(cfg.iteration_limit - s.it, 1))
            return jax.lax.fori_loop(0, steps, lambda i, t: take_step(t), s)

        stop = s.done
        if cfg.continue_after_optimal:
            stop = stop & (s.status != int(TerminationStatus.OPTIMAL))
        return jax.lax.cond(stop, lambda t: t, go, s)

    return jax.lax.while_loop(lambda s: ~s.done & (s.it < until), body, st)


def finish(Q, c, A, b, l, u, eq, const, st: _State, cfg: PdhgConfig):
    """(x, y, status, iterations, convergence info) of a terminated state, for the original problem."""
    su = _setup(Q, c, A, b, l, u, eq, const, cfg)
    fin = _unscale(st.avg, su.D, su.E)
    return fin.x, fin.y, st.status, st.it, st.out


def solve_dense(Q, c, A, b, l, u, eq, const, x0, y0, cfg: PdhgConfig):
    """raPDHG on dense arrays. Q (n,n), c (n,), A (m,n), b (m,), l/u (n,), eq bool (m,), x0 (n,), y0 (m,).

    Returns (x, y, status, iterations, convergence-info tuple) for the original (unscaled) problem.
    Pure and jittable; vmap it over any of the arguments.
    """
    prob = (Q, c, A, b, l, u, eq, const)
    st = start(*prob, x0, y0, cfg)
    st = advance(*prob, st, cfg)
    return finish(*prob, st, cfg)


def _problem_arrays(problem):
    """Dense arrays (Q, c, K, rhs, l, u, eq_mask, const) from an optima_jax or MPAX problem."""
    c = jnp.asarray(problem.objective_vector)
    n = c.shape[-1]
    Q = to_dense(problem.objective_matrix)
    K = to_dense(problem.constraint_matrix)
    rhs = jnp.asarray(problem.right_hand_side)
    K = K.reshape(rhs.shape[-1], n)
    eq = jnp.asarray(problem.equalities_mask).astype(bool)
    return (
        Q,
        c,
        K,
        rhs,
        jnp.asarray(problem.variable_lower_bound),
        jnp.asarray(problem.variable_upper_bound),
        eq,
        jnp.asarray(problem.objective_constant),
    )


@dataclasses.dataclass(eq=False)
class raPDHG:
    """Restarted accelerated PDHG with MPAX 0.2.4's constructor arguments and `optimize` signature.

    Accepted for compatibility and ignored: verbose, debug, display_frequency, jit, unroll,
    eps_primal_infeasible, eps_dual_infeasible, adaptive_step_size* (this solver always uses the
    constant accelerated step size that MPAX uses for QPs), feasibility_polishing, eps_feas_polish,
    infeasibility_detection (no infeasibility certificates: such problems end at ITERATION_LIMIT).
    """

    verbose: bool = False
    debug: bool = False
    display_frequency: int = 10
    jit: bool = True
    unroll: bool = False
    termination_evaluation_frequency: int = 64
    optimality_norm: float = math.inf
    eps_abs: float = 1e-4
    eps_rel: float = 1e-4
    eps_primal_infeasible: float = 1e-8
    eps_dual_infeasible: float = 1e-8
    iteration_limit: int = 2**31 - 1
    l_inf_ruiz_iterations: int = 10
    l2_norm_rescaling: bool = False
    pock_chambolle_alpha: float = 1.0
    primal_importance: float = 1.0
    scale_invariant_initial_primal_weight: bool = True
    restart_scheme: int = 3  # ADAPTIVE_KKT (2 = FIXED_FREQUENCY)
    restart_to_current_metric: int = 2  # KKT_GREEDY (1 = always restart to the average)
    restart_frequency_if_fixed: int = 1000
    artificial_restart_threshold: float = 0.36
    sufficient_reduction_for_restart: float = 0.2
    necessary_reduction_for_restart: float = 0.8
    primal_weight_update_smoothing: float = 0.5
    adaptive_step_size: bool = True
    adaptive_step_size_reduction_exponent: float = 0.3
    adaptive_step_size_growth_exponent: float = 0.6
    adaptive_step_size_limit_coef: float = 1.0
    warm_start: bool = False
    feasibility_polishing: bool = False
    eps_feas_polish: float = 1e-6
    infeasibility_detection: bool = True

    def config(self) -> PdhgConfig:
        """The static settings used by `solve_dense` (QP settings: smoothing 0.2 when Q ≠ 0, as MPAX)."""
        return PdhgConfig(
            eps_abs=float(self.eps_abs),
            eps_rel=float(self.eps_rel),
            iteration_limit=int(self.iteration_limit),
            termination_evaluation_frequency=int(self.termination_evaluation_frequency),
            optimality_norm=float(self.optimality_norm),
            l_inf_ruiz_iterations=int(self.l_inf_ruiz_iterations),
            l2_norm_rescaling=bool(self.l2_norm_rescaling),
            pock_chambolle_alpha=None if self.pock_chambolle_alpha is None else float(self.pock_chambolle_alpha),
            primal_importance=float(self.primal_importance),
            scale_invariant_initial_primal_weight=bool(self.scale_invariant_initial_primal_weight),
            restart_to_current=int(self.restart_to_current_metric) == 2,
            fixed_restart_frequency=int(self.restart_frequency_if_fixed)
            if int(self.restart_scheme) == 2
            else (2**31 - 1 if int(self.restart_scheme) == 1 else 0),
            artificial_restart_threshold=float(self.artificial_restart_threshold),
            sufficient_reduction_for_restart=float(self.sufficient_reduction_for_restart),
            necessary_reduction_for_restart=float(self.necessary_reduction_for_restart),
            primal_weight_update_smoothing=0.2,
            continue_after_optimal=True,
        )

    def optimize(self, original_problem, initial_primal_solution=None, initial_dual_solution=None) -> SaddlePointOutput:
        """Solve `original_problem` (built by optima_jax.qp.create_qp or mpax.create_qp).

        The initial solutions are used when given (MPAX only uses them with warm_start=True; here
        they are used whenever passed, and warm_start=True without them starts at zero).
        """
        Q, c, K, rhs, l, u, eq, const = _problem_arrays(original_problem)
        n, m = c.shape[-1], rhs.shape[-1]
        x0 = jnp.zeros(n, Q.dtype) if initial_primal_solution is None else jnp.asarray(initial_primal_solution)
        y0 = jnp.zeros(m, Q.dtype) if initial_dual_solution is None else jnp.asarray(initial_dual_solution)
        t0 = timeit.default_timer()
        x, y, status, its, ci = _solve_jit(Q, c, K, rhs, l, u, eq, const, x0, y0, self.config())
        return SaddlePointOutput(
            primal_solution=x,
            dual_solution=y,
            termination_status=status,
            iteration_count=its,
            primal_objective=ci[0],
            dual_objective=ci[1],
            corrected_dual_objective=ci[2],
            primal_residual_norm=ci[3],
            dual_residual_norm=ci[4],
            relative_primal_residual_norm=ci[5],
            relative_dual_residual_norm=ci[6],
            absolute_optimality_gap=ci[7],
            relative_optimality_gap=ci[8],
            timing_info={"Iteration loop": timeit.default_timer() - t0},
        )


_solve_jit = jax.jit(solve_dense, static_argnums=(10,))
