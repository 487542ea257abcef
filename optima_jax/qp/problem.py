"""MPAX-compatible problem containers: `create_qp`, `create_lp`, `QuadraticProgrammingProblem`,
`TerminationStatus` and the `SaddlePointOutput` result.

Field names and enum values follow MPAX 0.2.4 so that code written for MPAX runs unchanged.
The problem is

    minimize ½ xᵀ Q x + cᵀ x + objective_constant
    s.t.     A x = b          (rows where equalities_mask is True)
             G x ≥ h          (the remaining rows)
             l ≤ x ≤ u
"""

from __future__ import annotations

import dataclasses
import functools
from enum import IntEnum
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.sparse import BCOO, BCSR


class TerminationStatus(IntEnum):
    """Why the solver stopped (same integer values as MPAX)."""

    UNSPECIFIED = 1
    OPTIMAL = 2
    PRIMAL_INFEASIBLE = 3
    DUAL_INFEASIBLE = 4
    TIME_LIMIT = 5
    ITERATION_LIMIT = 6
    NUMERICAL_ERROR = 7
    INVALID_PROBLEM = 8
    OTHER = 9


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "num_variables",
        "num_constraints",
        "variable_lower_bound",
        "variable_upper_bound",
        "isfinite_variable_lower_bound",
        "isfinite_variable_upper_bound",
        "objective_matrix",
        "objective_vector",
        "objective_constant",
        "constraint_matrix",
        "constraint_matrix_t",
        "right_hand_side",
        "num_equalities",
        "equalities_mask",
        "inequalities_mask",
    ],
    meta_fields=["is_lp"],
)
@dataclasses.dataclass
class QuadraticProgrammingProblem:
    """A QP in MPAX's standard form (see module docstring). Matrices are dense arrays or BCOO."""

    num_variables: Any
    num_constraints: Any
    variable_lower_bound: Any
    variable_upper_bound: Any
    isfinite_variable_lower_bound: Any
    isfinite_variable_upper_bound: Any
    objective_matrix: Any
    objective_vector: Any
    objective_constant: Any
    constraint_matrix: Any
    constraint_matrix_t: Any
    right_hand_side: Any
    num_equalities: Any
    equalities_mask: Any
    inequalities_mask: Any
    is_lp: bool


class SaddlePointOutput(NamedTuple):
    """Solver result; field names as in MPAX. Norms are in the solver's `optimality_norm`."""

    primal_solution: jax.Array
    dual_solution: jax.Array
    termination_status: jax.Array
    iteration_count: jax.Array
    primal_objective: jax.Array
    dual_objective: jax.Array
    corrected_dual_objective: jax.Array
    primal_residual_norm: jax.Array
    dual_residual_norm: jax.Array
    relative_primal_residual_norm: jax.Array
    relative_dual_residual_norm: jax.Array
    absolute_optimality_gap: jax.Array
    relative_optimality_gap: jax.Array
    timing_info: dict


def to_dense(m) -> jax.Array:
    """Dense float array from a dense array, NumPy array, BCOO/BCSR or SciPy sparse matrix."""
    if isinstance(m, (BCOO, BCSR)):
        return m.todense()
    if hasattr(m, "toarray") and not isinstance(m, (np.ndarray, jax.Array)):
        return jnp.asarray(m.toarray())
    return jnp.asarray(m)


def _rows(m) -> int:
    return int(m.shape[0])


def _as_matrix(m, n: int, sparse: bool):
    if sparse:
        if isinstance(m, BCOO):
            return m
        if isinstance(m, BCSR):
            return m.to_bcoo()
        d = to_dense(m).reshape(-1, n) if np.size(m) else jnp.zeros((_rows(m), n))
        return BCOO.fromdense(d)
    d = to_dense(m)
    return d.reshape(d.shape[0], n) if d.size else jnp.zeros((d.shape[0], n), d.dtype)


def _is_zero(Q) -> bool | jax.Array:
    try:
        if isinstance(Q, BCOO):
            return bool(Q.nse == 0 or np.all(np.asarray(Q.data) == 0))
        return bool(np.all(np.asarray(to_dense(Q)) == 0))
    except (
        jax.errors.ConcretizationTypeError,
        jax.errors.TracerArrayConversionError,
    ):  # traced (e.g. under vmap): decide at run time
        return False


def create_qp(Q, c, A, b, G, h, l, u, use_sparse_matrix: bool = True) -> QuadraticProgrammingProblem:
    """Build min ½xᵀQx + cᵀx s.t. Ax = b, Gx ≥ h, l ≤ x ≤ u (MPAX's `create_qp` signature).

    Q: (n, n); c: (n,); A: (m_eq, n); b: (m_eq,); G: (m_ineq, n); h: (m_ineq,); l, u: (n,) (±inf allowed).
    A and G may have zero rows: a QP with box constraints only is allowed here (unlike MPAX 0.2.4).
    """
    c = jnp.asarray(c)
    n = int(c.shape[0])
    b = jnp.asarray(b).reshape(-1)
    h = jnp.asarray(h).reshape(-1)
    l = jnp.asarray(l)
    u = jnp.asarray(u)
    if use_sparse_matrix:
        from jax.experimental.sparse import bcoo_concatenate

        Am, Gm = _as_matrix(A, n, True), _as_matrix(G, n, True)
        K = bcoo_concatenate([Am, Gm], dimension=0)
        Qm = _as_matrix(Q, n, True)
    else:
        K = jnp.concatenate([_as_matrix(A, n, False), _as_matrix(G, n, False)], axis=0)
        Qm = to_dense(Q)
    m_eq, m_in = int(b.shape[0]), int(h.shape[0])
    return QuadraticProgrammingProblem(
        num_variables=n,
        num_constraints=m_eq + m_in,
        variable_lower_bound=l,
        variable_upper_bound=u,
        isfinite_variable_lower_bound=jnp.isfinite(l),
        isfinite_variable_upper_bound=jnp.isfinite(u),
        objective_matrix=Qm,
        objective_vector=c,
        objective_constant=0.0,
        constraint_matrix=K,
        constraint_matrix_t=K.T,
        right_hand_side=jnp.concatenate([b, h]),
        num_equalities=m_eq,
        equalities_mask=jnp.concatenate([jnp.ones(m_eq, bool), jnp.zeros(m_in, bool)]),
        inequalities_mask=jnp.concatenate([jnp.zeros(m_eq, bool), jnp.ones(m_in, bool)]),
        is_lp=_is_zero(Qm),
    )


def create_lp(c, A, b, G, h, l, u, use_sparse_matrix: bool = True) -> QuadraticProgrammingProblem:
    """Build the LP min cᵀx s.t. Ax = b, Gx ≥ h, l ≤ x ≤ u (a QP with Q = 0)."""
    n = int(jnp.asarray(c).shape[0])
    prob = create_qp(jnp.zeros((n, n)), c, A, b, G, h, l, u, use_sparse_matrix)
    return dataclasses.replace(prob, is_lp=True)
