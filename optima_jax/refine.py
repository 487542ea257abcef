"""Mask refinement between the selector and the weight update, registered by name (`REFINERS`).

A refiner starts from a selector's mask and changes the support to lower the layer objective
½·tr(ΔW (H + λI) ΔWᵀ) (λ = damp · mean(diag H), the weight update's ridge), keeping the start mask's sparsity
pattern: unstructured, the same number of kept entries in every row as the start mask (so the spec's per-row
count for Wanda, Thanos, SparseGPT's own per-row count, an external mask's counts); N:M, N kept in every group
of M consecutive inputs of a row. It ends with the exact solve (`qp.solve_rows(method="exact")`) on the final
support, and keeps, per row, the better of (refined support, its exact weights) and (start support, its exact
weights): rows are independent given the support, so the refined objective is never above the start mask's
exact optimum, row by row (up to the solver's rtol).

Names:
  none  the selector's mask, unchanged
  alps  ALPS's ADMM (Meng, Behdin, Wang, Mazumder, NeurIPS 2024; mazumder-lab/ALPS `alps.py`, `ALPS_admm`) on the
        ℓ0-constrained layer problem, per row batched over one shared H (docs/refine.md):
          H normalised to unit diagonal after damping, Ĥ = S Hd S (alps.py lines 85-93);
          W-step  B = (B₀Ĥ − V + ρD)(Ĥ + ρI)⁻¹, one eigendecomposition Ĥ = QΛQᵀ reused for every ρ (113-114, 151);
          D-step  D = projection of B + V/ρ on the sparsity set (per row here, N:M groups; 153-165);
          dual    V += ρ(B − D) (167);
          every `check_every` iterations the support change decides ρ: ×1.3 above 10% of the kept entries,
          ×1.2 above 0.5%, ×1.1 for any change once ρ has grown, else ÷5 (and a restart when ρ never grew);
          stop when the support stops changing, or after `min_iter` when it changes by less than `stop_change`
          of the kept entries (169-225); the final support is the projection of B (227-236).
        Differences: the start is the selector's support (D₀ = the start mask's exact optimum; ALPS starts
        from magnitude on the normalised weights, i.e. Wanda's mask); per-row projection (ALPS: layer-wide);
        ρ kept ≥ 1e-6; the final weights are our exact solve (ALPS: 10 CG steps); the per-row safeguard above.

Cost: one eigendecomposition per H (`factor_hessian`; the pruner passes it on to the next linear of the same input,
so q/k/v and gate/up share one), per iteration one (out, n)·(n, n) product and one projection, per ρ change one
(n, n)·(n, n) rebuild of (Ĥ+ρI)⁻¹; layers with out < n/3 multiply in the eigenbasis instead (two products per
iteration, no rebuild: `eigenbasis_w_step`). Then one exact solve on the final support.

Device residency (tests/test_device_resident.py): H, W and the masks stay device arrays; the loop runs in one
jitted `lax.while_loop`; the report's scalars come back in one `transfers.fetch`.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from optima_jax import qp
from optima_jax.config import default_config
from optima_jax.errors import OptimaError
from optima_jax.selectors.base import LinearStats, SelectionResult
from optima_jax.selectors.masks import apply_mask
from optima_jax.sparsity import SparsitySpec
from optima_jax.transfers import fetch, put, to_device
from optima_jax.updates import UpdateSettings

HI = jax.lax.Precision.HIGHEST
RHO_MIN, RHO_MAX = 1e-6, 1e6  # ALPS caps ρ at 1e6 (alps.py line 198); the floor is ours (ρ ÷ 5 repeatedly)


class RefineError(OptimaError):
    """Bad input to a mask refiner (unknown name, bad settings)."""


@dataclasses.dataclass(frozen=True)
class RefineSettings:
    """The refine.* settings of a run config (hashable: a jit-static argument)."""

    method: str = "none"
    max_iter: int = 300
    rho: float = 0.1
    check_every: int = 3
    min_iter: int = 30
    stop_change: float = 3e-4

    @classmethod
    def from_config(cls, cfg=None, **overrides) -> "RefineSettings":
        """From a run config (default: `default_config()`); `overrides` replace fields by name."""
        r = (default_config() if cfg is None else cfg).refine
        out = cls(
            method=str(r.method),
            max_iter=int(r.max_iter),
            rho=float(r.rho),
            check_every=int(r.check_every),
            min_iter=int(r.min_iter),
            stop_change=float(r.stop_change),
        )
        return dataclasses.replace(out, **overrides)


class RefineResult(NamedTuple):
    """selection: the refined keep mask and its weights (float32, pruned entries 0; the exact optimum on the
    support, per row the better of refined and start). start_weight: the exact optimum on the start mask.
    info: python scalars for the report (iterations, rho, rows_refined, entries_changed, seconds_admm).
    factor: the factorisation of H the refiner used (None for `none`), reusable for another linear of that H."""

    selection: SelectionResult
    start_weight: jax.Array
    info: dict
    factor: HessianFactor | None = None  # the refiner's factorisation of H, to pass back for the next linear


class HessianFactor(NamedTuple):
    """The ADMM's factorisation of one damped H (`factor_hessian`), shared by the linears that read the same input
    (q/k/v, gate/up: one H, one eigendecomposition). Hh (n, n) Ĥ = Hd / (x xᵀ); x (n,) sqrt(diag Hd); lam the
    ridge λ; L (n,) Ĥ's eigenvalues (clipped at 0); Q (n, n) its eigenvectors."""

    Hh: jax.Array
    x: jax.Array
    lam: jax.Array
    L: jax.Array
    Q: jax.Array


RefinerFn = Callable[..., RefineResult]
REFINERS: dict[str, RefinerFn] = {}


def register_refiner(name: str):
    def deco(fn: RefinerFn) -> RefinerFn:
        REFINERS[name] = fn
        return fn

    return deco


def get_refiner(name: str) -> RefinerFn:
    if name not in REFINERS:
        raise RefineError(f"unknown refiner {name!r}; registered: {', '.join(sorted(REFINERS))}")
    return REFINERS[name]


# ---------------------------------------------------------------------------------------------------------------
# the ADMM core (any float dtype: float32 in runs, float64 for the reference test)


def _keep_largest(a, kept_row):
    """Keep the kept_row[r] largest entries of every row of a (≥ 0, finite). Radix select on the float's bit
    pattern (monotone for a ≥ 0): per row, the k-th largest value bit by bit, one compare-and-count pass per bit,
    then ties at that value: the higher index is kept (the stable ascending sort removes the lower index first)."""
    itype, nbits = (jnp.int64, 63) if a.dtype == jnp.float64 else (jnp.int32, 31)
    bits = jax.lax.bitcast_convert_type(a, itype)
    k = kept_row[:, None].astype(itype)

    def step(i, t):
        cand = t | jnp.left_shift(jnp.ones((), itype), nbits - 1 - i)
        return jnp.where(jnp.sum(bits >= cand, axis=1, keepdims=True) >= k, cand, t)

    thr = jax.lax.fori_loop(0, nbits, step, jnp.zeros_like(k))
    above = bits > thr
    need = k - jnp.sum(above, axis=1, keepdims=True)
    tied = bits == thr
    from_right = jnp.cumsum(tied[:, ::-1], axis=1)[:, ::-1]
    return (above | (tied & (from_right <= need))) & (k > 0)


def _keep_nm(a, n: int, m: int):
    """N of every M consecutive entries kept: ranks within each group by pairwise comparison (M small), ties to
    the lower index removed first, as `selectors.masks.keep_mask_nm`."""
    g = a.reshape(-1, m)
    i = jnp.arange(m)
    smaller = (g[:, None, :] < g[:, :, None]) | ((g[:, None, :] == g[:, :, None]) & (i[None, :] < i[:, None])[None])
    return (jnp.sum(smaller, axis=2) >= m - n).reshape(a.shape)


def project(Z, kept_row, spec: SparsitySpec):
    """Keep mask of the largest |Z| per row: `kept_row` entries of every row (unstructured), or N of every M
    consecutive inputs (N:M). Ties: the lower index is removed first (stable sort, as the selectors)."""
    a = jnp.abs(Z)
    if spec.kind == "nm":
        return _keep_nm(a, spec.n, spec.m)
    return _keep_largest(a, kept_row)


@jax.jit
def normalised_hessian(H, damp):
    """(Ĥ, x, λ): Hd = H + λI with λ = damp · mean(diag H) (mean 1 if ≤ 0, as the solver), x = sqrt(diag Hd),
    Ĥ = Hd / (x xᵀ) (0 on dead channels, x = 0)."""
    H = 0.5 * (H + H.T)
    md = jnp.mean(jnp.diagonal(H))
    lam = damp * jnp.where(md > 0, md, 1.0)
    Hd = H + lam * jnp.eye(H.shape[0], dtype=H.dtype)
    x = jnp.sqrt(jnp.maximum(jnp.diagonal(Hd), 0))
    ix = jnp.where(x > 0, 1 / jnp.where(x > 0, x, 1), 0)
    return Hd * ix[:, None] * ix[None, :], x, lam


@jax.jit
def factor_hessian(H, damp) -> HessianFactor:
    """`normalised_hessian` and Ĥ's eigendecomposition, in H's dtype: what `admm_support` needs of H."""
    Hh, x, lam = normalised_hessian(H, damp.astype(H.dtype))
    L, Q = jnp.linalg.eigh(Hh)
    return HessianFactor(Hh, x, lam, jnp.maximum(L, 0), Q)


def eigenbasis_w_step(out: int, n: int) -> bool:
    """Whether the W-step multiplies in Ĥ's eigenbasis, B = ((R Q) diag(1/(L+ρ))) Qᵀ: two (out, n)·(n, n) products
    per iteration, against one product with (Ĥ+ρI)⁻¹ and that n³ inverse rebuilt at every ρ change (every
    `check_every` iterations). Cheaper for short layers, out < n/3 (GQA key/value projections)."""
    return 3 * out < n


def admm_support(
    H, W, keep0, W0, damp, *, spec: SparsitySpec, cfg: RefineSettings, factor: HessianFactor | None = None
):
    """ALPS's ADMM from the start support `keep0` (start point D₀ = W0, the start's exact weights, normalised).

    factor: `factor_hessian(H, damp)` when the caller has it (another linear of the same H); else made here.
    Returns (keep, W_admm, iterations, rho): the final support (projection of B), the ADMM weights B in the
    original coordinates on that support (a warm start for the exact solve), iterations run, final ρ. Works
    in the dtype of H and W."""
    if factor is None:
        factor = factor_hessian(H.astype(W.dtype), jnp.asarray(damp))
    return _admm(factor, W, keep0, W0, spec=spec, cfg=cfg)


@partial(jax.jit, static_argnames=("spec", "cfg"))
def _admm(factor: HessianFactor, W, keep0, W0, *, spec: SparsitySpec, cfg: RefineSettings):
    dt = W.dtype
    Hh, x, L, Q = (a.astype(dt) for a in (factor.Hh, factor.x, factor.L, factor.Q))
    mm = partial(jnp.matmul, precision=HI)
    in_eigenbasis = eigenbasis_w_step(*W.shape)

    def inverse(rho):  # (Ĥ + ρI)⁻¹ from the one eigendecomposition (unused in the eigenbasis)
        if in_eigenbasis:
            return jnp.zeros((), dt)
        return mm(Q * (1 / (L + rho))[None, :], Q.T)

    def w_step(R, rho, inv):  # R (Ĥ + ρI)⁻¹
        if in_eigenbasis:
            return mm(mm(R, Q) * (1 / (L + rho))[None, :], Q.T)
        return mm(R, inv)

    Y = mm(W * x[None, :], Hh)  # B₀Ĥ
    D0 = jnp.where(keep0, W0 * x[None, :], 0).astype(dt)
    kept_row = jnp.sum(keep0, axis=1)
    total = jnp.sum(kept_row).astype(dt)
    rho0 = jnp.asarray(cfg.rho, dt)
    state = dict(
        i=jnp.zeros((), jnp.int32),
        B=D0,
        D=D0,
        V=jnp.zeros_like(D0),
        rho=rho0,
        inv=inverse(rho0),
        grown=jnp.zeros((), bool),
        prev=keep0,
        done=jnp.zeros((), bool),
    )

    def check(s, keep):
        ch = jnp.sum(keep != s["prev"])
        fr = ch.astype(dt) / total
        c1 = fr > 0.1
        c2 = ~c1 & (fr > 0.005)
        c3 = ~c1 & ~c2 & (ch > 0)
        c4 = ~(c1 | c2 | c3)
        g = s["grown"]
        rho = s["rho"]
        rho = jnp.where(c1, rho * 1.3, jnp.where(c2, rho * 1.2, jnp.where(g, jnp.where(c3, rho * 1.1, rho), rho / 5)))
        reset = c3 & ~g
        stop = c4 & g
        rho = jnp.clip(rho, RHO_MIN, RHO_MAX)
        stop = stop | ((s["i"] - 1 >= cfg.min_iter) & (fr < cfg.stop_change))
        return dict(
            s,
            D=jnp.where(reset, D0, s["D"]),
            V=jnp.where(reset, 0, s["V"]),
            rho=rho,
            inv=inverse(rho),
            grown=g | c1 | c2,
            prev=keep,
            done=stop,
        )

    def body(s):
        rho = s["rho"]
        B = w_step(Y - s["V"] + rho * s["D"], rho, s["inv"])
        Z = B + s["V"] / rho
        keep = project(Z, kept_row, spec)
        D = jnp.where(keep, Z, 0)
        V = s["V"] + rho * (B - D)
        s = dict(s, i=s["i"] + 1, B=B, D=D, V=V)
        return jax.lax.cond(s["i"] % cfg.check_every == 0, lambda s: check(s, keep), lambda s: s, s)

    s = jax.lax.while_loop(lambda s: (s["i"] < cfg.max_iter) & ~s["done"], body, state)
    keep = project(s["B"], kept_row, spec)
    ix = jnp.where(x > 0, 1 / jnp.where(x > 0, x, 1), 0)
    W_admm = jnp.where(keep, jnp.where(x[None, :] > 0, s["B"] * ix[None, :], W), 0)
    return keep, W_admm, s["i"], s["rho"]


@jax.jit
def row_objectives(H, W, Wn, lam):
    """float (out,): ½ ΔᵀHΔ + ½ λ|Δ|² per row (Δ = Wn − W): the damped objective the solves minimise."""
    d = Wn - W
    return 0.5 * jnp.sum(jnp.matmul(d, H, precision=HI) * d, axis=1) + 0.5 * lam * jnp.sum(d * d, axis=1)


@jax.jit
def _choose(H, W, keep0, W0, keep1, W1, lam):
    """Per row, the better of (start support, exact weights) and (refined support, exact weights); a row whose
    support did not change keeps the start's weights."""
    moved = jnp.any(keep1 != keep0, axis=1)
    better = moved & (row_objectives(H, W, W1, lam) < row_objectives(H, W, W0, lam))
    keep = jnp.where(better[:, None], keep1, keep0)
    weight = jnp.where(better[:, None], W1, W0)
    return keep, weight, jnp.sum(better), jnp.sum(keep != keep0)


def _solve(H, W, keep, damp: float, update: UpdateSettings, W_init, where: str):
    return qp.solve_rows(
        H,
        W,
        keep,
        damp=damp,
        method="exact",
        W_init=W_init,
        rtol=update.rtol,
        memory_budget_bytes=update.memory_budget_bytes,
        mesh=update.mesh,
        where=where,
    ).weight


@register_refiner("none")
def refine_none(
    W, selection, stats, spec, settings=None, update=None, *, damp=0.0, start_weight=None, factor=None, where="layer"
):
    """The selector's mask unchanged; start_weight as given (else the selector's weights)."""
    sw = apply_mask(selection.keep_mask, selection.weight) if start_weight is None else start_weight
    info = {"iterations": 0, "rho": None, "rows_refined": 0, "entries_changed": 0, "seconds_admm": 0.0}
    return RefineResult(selection, sw, info)


@register_refiner("alps")
def refine_alps(
    W,
    selection: SelectionResult,
    stats: LinearStats,
    spec,
    settings: RefineSettings | None = None,
    update: UpdateSettings | None = None,
    *,
    damp: float,
    start_weight=None,
    factor: HessianFactor | None = None,
    where: str = "layer",
) -> RefineResult:
    """ALPS-style refinement of `selection`'s mask (module docstring). W (out, in) dense; stats.H Σxᵀx; damp:
    the ridge of every solve and of the ADMM (damp · mean(diag H)). start_weight: the exact optimum on the start
    mask at this damp if the caller has it (else solved here). factor: `factor_hessian(stats.H, damp)` from another
    linear of the same H at the same damp (else made here). Returns a RefineResult (info: python scalars)."""
    settings = RefineSettings.from_config(method="alps") if settings is None else settings
    update = UpdateSettings.from_config() if update is None else update
    spec = SparsitySpec.parse(spec)
    spec.validate_for(W.shape[1], where=where)
    if settings.max_iter < 1 or settings.check_every < 1 or not settings.rho > 0:
        raise RefineError(f"{where}: refine needs max_iter >= 1, check_every >= 1 and rho > 0, got {settings}")
    H, W, keep0 = to_device(stats.H, jnp.float32), to_device(W, jnp.float32), to_device(selection.keep_mask)
    if start_weight is None:
        start_weight = _solve(H, W, keep0, damp, update, apply_mask(keep0, selection.weight), where)
    if factor is not None and tuple(factor.Q.shape) != tuple(H.shape):
        raise RefineError(f"{where}: the shared factorisation is for a {factor.Q.shape} H, this H is {H.shape}")
    dput = put(damp)
    start_weight.block_until_ready()
    t0 = time.perf_counter()
    factor = factor_hessian(H, dput) if factor is None else factor
    keep1, W_admm, its, rho = admm_support(H, W, keep0, start_weight, dput, spec=spec, cfg=settings, factor=factor)
    W_admm.block_until_ready()
    t_admm = time.perf_counter() - t0
    W1 = _solve(H, W, keep1, damp, update, W_admm, where)
    keep, weight, rows, changed = _choose(H, W, keep0, start_weight, keep1, W1, factor.lam)
    num = fetch({"iterations": its, "rho": rho, "rows_refined": rows, "entries_changed": changed})
    info = {
        "iterations": int(num["iterations"]),
        "rho": float(num["rho"]),
        "rows_refined": int(num["rows_refined"]),
        "entries_changed": int(num["entries_changed"]),
        "seconds_admm": t_admm,
    }
    return RefineResult(SelectionResult(keep, weight, {"refiner": "alps"}), start_weight, info, factor)
