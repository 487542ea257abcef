"""OPTIMA's QP solvers: an MPAX-compatible raPDHG interface and the batched shared-H row solver."""

from optima_jax.qp.problem import (
    QuadraticProgrammingProblem,
    SaddlePointOutput,
    TerminationStatus,
    create_lp,
    create_qp,
)
from optima_jax.qp import paper
from optima_jax.qp.rapdhg import PdhgConfig, raPDHG, solve_dense
from optima_jax.qp.rows import (
    AutoDampResult,
    RowSolveResult,
    SharedPreconditioner,
    auto_damp_solve,
    shared_preconditioner,
    solve_rows,
    validation_error,
)

__all__ = [
    "QuadraticProgrammingProblem",
    "SaddlePointOutput",
    "TerminationStatus",
    "create_lp",
    "create_qp",
    "PdhgConfig",
    "raPDHG",
    "solve_dense",
    "paper",
    "AutoDampResult",
    "RowSolveResult",
    "SharedPreconditioner",
    "auto_damp_solve",
    "shared_preconditioner",
    "solve_rows",
    "validation_error",
]
