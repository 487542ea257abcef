"""Mask refinement (optima_jax.refine, issue 30): ALPS's ADMM against an independent float64 NumPy reference, the
never-worse property, the sparsity pattern, a real improvement on a correlated layer, the pruner/pipeline
integration and the config checks."""

import json

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp

import tiny
from optima_jax.config import default_config
from optima_jax.errors import OptimaError
from optima_jax.refine import (
    REFINERS,
    RefineSettings,
    admm_support,
    eigenbasis_w_step,
    factor_hessian,
    get_refiner,
    project,
    refine_alps,
)
from optima_jax.selectors import LinearStats, SelectionResult, get_selector
from optima_jax.sparsity import SparsitySpec
from optima_jax.updates import UpdateSettings
from optima_jax.validation import validate

TIGHT = UpdateSettings.from_config(rtol=1e-6)  # the refiner's exact solves, closer to the float64 optimum


def make_layer(seed, n=48, out=20, T=400):
    """H = XᵀX of correlated, heavy-tailed inputs (a shared low-rank factor, mixed columns, uneven scales)."""
    rng = np.random.default_rng(seed)
    mix = (np.eye(n) + rng.normal(size=(n, n)) * 0.6 / np.sqrt(n)) * np.exp(0.5 * rng.normal(size=n))
    X = rng.standard_t(5, size=(T, n)) @ mix + rng.normal(size=(T, 3)) @ rng.normal(size=(3, n)) * 2
    H = X.T @ X
    W = rng.normal(size=(out, n)) * 0.05
    return H.astype(np.float32), W.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# float64 NumPy reference: the same algorithm, written independently of optima_jax.refine


def ref_project(Z, kept_row, spec):
    a = np.abs(Z)
    R, n = a.shape
    if spec.kind == "nm":
        g = a.reshape(-1, spec.m)
        drop = np.argsort(g, axis=1, kind="stable")[:, : spec.m - spec.n]
        keep = np.ones(g.shape, bool)
        np.put_along_axis(keep, drop, False, axis=1)
        return keep.reshape(R, n)
    keep = np.zeros((R, n), bool)
    for j in range(R):  # remove the n - kept smallest; ties: lower index removed first
        order = np.argsort(a[j], kind="stable")
        keep[j, order[n - kept_row[j] :]] = True
    return keep


def ref_optimum(Hd, W, keep):
    """Per row, the exact minimiser of ½ΔᵀHdΔ with Δ = −w on the pruned entries (direct solve)."""
    out = np.zeros_like(W)
    for j in range(W.shape[0]):
        f, s = keep[j], ~keep[j]
        d = np.zeros(W.shape[1])
        d[s] = -W[j, s]
        if f.any():
            d[f] = np.linalg.solve(Hd[np.ix_(f, f)], -Hd[np.ix_(f, s)] @ d[s])
        out[j] = W[j] + d
    return out


def ref_objective(Hd, W, Wn):
    d = np.asarray(Wn, np.float64) - W
    return 0.5 * np.sum((d @ Hd) * d, axis=1)


def ref_alps(H, W, keep0, damp, spec, cfg):
    """ALPS (alps.py ALPS_admm) per row from keep0: returns (support, iterations, final rho, Hd)."""
    H, W = H.astype(np.float64), W.astype(np.float64)
    n = H.shape[0]
    H = (H + H.T) / 2
    Hd = H + damp * np.mean(np.diag(H)) * np.eye(n)
    x = np.sqrt(np.diag(Hd))
    Hh = Hd / np.outer(x, x)
    lam, Q = np.linalg.eigh(Hh)
    lam = np.maximum(lam, 0)
    Y = (W * x) @ Hh
    D0 = ref_optimum(Hd, W, keep0) * x * keep0
    D, V = D0.copy(), np.zeros_like(D0)
    kept_row = keep0.sum(1)
    total = kept_row.sum()
    rho, grown, prev = cfg.rho, False, keep0
    inv = (Q / (lam + rho)) @ Q.T
    for it in range(cfg.max_iter):
        B = (Y - V + rho * D) @ inv
        Z = B + V / rho
        keep = ref_project(Z, kept_row, spec)
        D = np.where(keep, Z, 0.0)
        V = V + rho * (B - D)
        if (it + 1) % cfg.check_every == 0:
            change = int(np.sum(keep != prev))
            frac = change / total
            prev = keep
            if frac > 0.1:
                grown, rho = True, rho * 1.3
            elif frac > 0.005:
                grown, rho = True, rho * 1.2
            elif change > 0:
                if grown:
                    rho *= 1.1
                else:
                    rho /= 5
                    D, V = D0.copy(), np.zeros_like(V)
            elif grown:
                break
            else:
                rho /= 5
            rho = min(max(rho, 1e-6), 1e6)
            inv = (Q / (lam + rho)) @ Q.T
            if it >= cfg.min_iter and frac < cfg.stop_change:
                break
    return ref_project(B, kept_row, spec), it + 1, rho, Hd


def wanda_keep(H, W, spec):
    return np.array(get_selector("wanda")(jnp.asarray(W), LinearStats(jnp.asarray(H)), spec).keep_mask)


def run_refine(H, W, keep0, spec, damp, update=TIGHT, sel_weight=None):
    sel = SelectionResult(jnp.asarray(keep0), jnp.asarray(np.where(keep0, W, 0) if sel_weight is None else sel_weight))
    return refine_alps(
        jnp.asarray(W), sel, LinearStats(jnp.asarray(H)), spec, RefineSettings(method="alps"), update, damp=damp
    )


@pytest.mark.parametrize("sp", ["0.3", "0.5", "0.8", "2:4", "1:4", "3:8"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_projection_matches_the_stable_sort_with_ties(sp, dtype):
    """The radix-select projection (unstructured) and the N:M one keep exactly what a stable ascending sort keeps,
    ties included (repeated values, zeros, ±0), for uneven per-row counts, 0 and all kept."""
    spec = SparsitySpec.parse(sp)
    rng = np.random.default_rng(0)
    Z = rng.integers(-3, 4, size=(30, 48)).astype(dtype)  # many ties, zeros and sign pairs
    Z[::4] = rng.normal(size=(8, 48)) * np.exp(rng.normal(size=(8, 48)) * 5)  # a wide range of exponents
    Z[2, :5] = -0.0
    n_drop = spec.expected_pruned_per_row(48)
    kept = np.full(30, 48 - n_drop) + (rng.integers(-3, 4, size=30) if spec.kind == "unstructured" else 0)
    kept = np.clip(kept, 0, 48)
    if spec.kind == "unstructured":
        kept[0], kept[1] = 0, 48
    want = ref_project(Z, kept, spec)
    with jax.enable_x64(dtype == "float64"):
        got = jax.jit(lambda z, k: project(z, k, spec))(jnp.asarray(Z), jnp.asarray(kept))
        np.testing.assert_array_equal(np.asarray(got), want)


# (seed, sparsity, out): out=12 < n/3 takes the W-step in Ĥ's eigenbasis (`eigenbasis_w_step`), 20 the inverse
CASES = [(seed, sp, 20) for seed in (0, 1, 2) for sp in ("0.5", "0.7", "2:4")] + [(3, "0.7", 12), (4, "2:4", 12)]


@pytest.mark.parametrize("seed,sp,out", CASES)
def test_admm_matches_float64_reference(seed, sp, out):
    """In float64 (x64), the JAX ADMM takes the reference's path: same support, iterations and final rho; the
    float32 run refines to the same support, and its objective is the float64 optimum's within 1e-6."""
    H, W = make_layer(seed, out=out)
    assert eigenbasis_w_step(out, H.shape[0]) == (out == 12)
    spec = SparsitySpec.parse(sp)
    keep0 = wanda_keep(H, W, spec)
    cfg = RefineSettings(method="alps")
    damp = 0.01
    keep_ref, its_ref, rho_ref, Hd = ref_alps(H, W, keep0, damp, spec, cfg)
    W0 = ref_optimum(Hd, W.astype(np.float64), keep0)
    with jax.enable_x64(True):
        keep, _, its, rho = admm_support(
            jnp.asarray(H, jnp.float64),
            jnp.asarray(W, jnp.float64),
            jnp.asarray(keep0),
            jnp.asarray(W0),
            jnp.asarray(damp, jnp.float64),
            spec=spec,
            cfg=cfg,
        )
        np.testing.assert_array_equal(np.asarray(keep), keep_ref)
        assert int(its) == its_ref
        assert float(rho) == pytest.approx(rho_ref, rel=1e-12)
    assert (keep_ref != keep0).any()  # the test exercises a real change of support

    res = run_refine(H, W, keep0, spec, damp)
    Wd = W.astype(np.float64)
    obj_start = ref_objective(Hd, Wd, W0)
    obj_refined = ref_objective(Hd, Wd, ref_optimum(Hd, Wd, keep_ref))
    better = (obj_refined < obj_start) & (keep_ref != keep0).any(axis=1)  # the per-row safeguard
    want_keep = np.where(better[:, None], keep_ref, keep0)
    np.testing.assert_array_equal(np.asarray(res.selection.keep_mask), want_keep)
    want = np.minimum(obj_refined, obj_start).sum()
    got = ref_objective(Hd, Wd, np.asarray(res.selection.weight)).sum()
    assert got == pytest.approx(want, rel=1e-6)
    assert res.info["iterations"] == its_ref and res.info["rows_refined"] == int(better.sum())


@pytest.mark.parametrize("sp", ["0.5", "0.7", "2:4"])
@pytest.mark.parametrize("damp", [0.0, 0.01])
@pytest.mark.parametrize("selector", ["wanda", "sparsegpt"])
def test_never_above_the_start_masks_exact_optimum(sp, damp, selector):
    """Property over seeds: per row and in total, the refined calibration objective (damped H, as solved) is not
    above the start mask's exact optimum. Tolerance: the float32 solver stops at a relative residual of 1e-6,
    so a solved row's objective exceeds its exact optimum by a relative O(1e-9), far below 1e-6."""
    spec = SparsitySpec.parse(sp)
    for seed in range(4):
        H, W = make_layer(10 + seed, n=64, out=16)
        sel = get_selector(selector)(jnp.asarray(W), LinearStats(jnp.asarray(H)), spec)
        keep0 = np.asarray(sel.keep_mask)
        res = run_refine(H, W, keep0, spec, damp, sel_weight=np.asarray(sel.weight))
        Hd = H.astype(np.float64) + damp * np.mean(np.diag(H).astype(np.float64)) * np.eye(H.shape[0])
        Wd = W.astype(np.float64)
        start = ref_objective(Hd, Wd, ref_optimum(Hd, Wd, keep0))
        got = ref_objective(Hd, Wd, np.asarray(res.selection.weight))
        assert np.all(got <= start * (1 + 1e-6) + 1e-12), (seed, got - start)
        assert got.sum() <= start.sum() * (1 + 1e-7)
        # pruned entries are exactly zero
        assert not np.any(np.asarray(res.selection.weight)[~np.asarray(res.selection.keep_mask)])


@pytest.mark.parametrize("sp", ["0.5", "0.7", "2:4", "1:4"])
def test_sparsity_pattern_is_kept(sp):
    """Unstructured: every row keeps as many entries as the start mask did (also for uneven start counts); N:M:
    N kept in every group of M consecutive inputs."""
    spec = SparsitySpec.parse(sp)
    H, W = make_layer(5, n=64, out=24)
    keep0 = wanda_keep(H, W, spec)
    if spec.kind == "unstructured":  # an uneven start (external masks, SparseGPT's per-block counts)
        rng = np.random.default_rng(0)
        for j in range(0, 24, 3):
            keep0[j, rng.choice(np.flatnonzero(~keep0[j]), j % 5, replace=False)] = True
    res = run_refine(H, W, keep0, spec, 0.01)
    keep = np.asarray(res.selection.keep_mask)
    assert res.info["entries_changed"] > 0 and res.info["entries_changed"] == int((keep != keep0).sum())
    if spec.kind == "nm":
        assert np.all(keep.reshape(-1, spec.m).sum(axis=1) == spec.n)
    else:
        np.testing.assert_array_equal(keep.sum(axis=1), keep0.sum(axis=1))


def test_strictly_better_than_wanda_exact_on_a_correlated_layer():
    """At 70% on a layer with correlated inputs, Wanda's mask is far from the best support: refinement lowers the
    exact-update objective (the same damped objective, float64) by a real margin."""
    H, W = make_layer(3, n=64, out=24, T=600)
    spec = SparsitySpec.parse("0.7")
    keep0 = wanda_keep(H, W, spec)
    res = run_refine(H, W, keep0, spec, 0.01)
    Hd = H.astype(np.float64) + 0.01 * np.mean(np.diag(H).astype(np.float64)) * np.eye(64)
    Wd = W.astype(np.float64)
    start = ref_objective(Hd, Wd, ref_optimum(Hd, Wd, keep0)).sum()
    got = ref_objective(Hd, Wd, np.asarray(res.selection.weight)).sum()
    assert got < 0.9 * start, (got, start)
    assert res.info["rows_refined"] > 0


def test_start_weight_is_used_as_given():
    """The pruner hands over the update's exact solve of the start mask: same result as solving it here."""
    H, W = make_layer(7)
    spec = SparsitySpec.parse("0.6")
    keep0 = wanda_keep(H, W, spec)
    a = run_refine(H, W, keep0, spec, 0.01, update=UpdateSettings.from_config())
    sel = SelectionResult(jnp.asarray(keep0), jnp.asarray(np.where(keep0, W, 0)))
    b = get_refiner("alps")(
        jnp.asarray(W),
        sel,
        LinearStats(jnp.asarray(H)),
        spec,
        RefineSettings(method="alps"),
        UpdateSettings.from_config(),
        damp=0.01,
        start_weight=a.start_weight,
    )
    np.testing.assert_array_equal(np.asarray(a.selection.keep_mask), np.asarray(b.selection.keep_mask))
    np.testing.assert_allclose(np.asarray(a.selection.weight), np.asarray(b.selection.weight), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# pruner and pipeline


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"sparsity": "2:4", "validation": True},
        {"solver.auto_damp": True, "validation": True},
        {"weight_update": "adam", "adam.steps": 20},
    ],
)
def test_prune_step_with_refinement_is_device_resident(over):
    """The per-linear step with refine.method=alps makes no implicit transfer (as tests/test_device_resident.py
    checks for the other settings) and its row carries the refinement's numbers."""
    from optima_jax import transfers
    from optima_jax.pruner import make_pruner
    from test_device_resident import make_task, realistic_layer

    H, W, Hv = realistic_layer(0)
    cfg = _cfg(**{"refine.method": "alps", **{k: v for k, v in over.items() if k != "validation"}})
    prune = make_pruner(cfg)
    task = make_task(H, W, Hv if over.get("validation") else None)
    free = prune(task)
    transfers.reset_counts()
    with jax.transfer_guard("disallow"):
        res = prune(task)
    np.testing.assert_array_equal(np.asarray(res.weight), np.asarray(free.weight))
    np.testing.assert_array_equal(np.asarray(res.keep_mask), np.asarray(free.keep_mask))
    assert transfers.FETCHED["largest"] <= W.shape[0] and transfers.FETCHED["elements"] <= 96
    row = res.row
    assert row["refine"] == "alps" and row["refine_changed"] > 0 and row["seconds_refine"] > 0
    assert row["refine_used"] == (row["refine_reason"] == "")
    assert not row["skipped"], row


def test_shared_factorisation():
    """Two linears of one H (as q/k/v): refining the second with the first's factorisation gives what it gives
    alone; a factorisation of another H's size is a one-line error."""
    from optima_jax.refine import RefineError

    H, W = make_layer(5)
    W2 = np.random.default_rng(6).normal(size=(16, W.shape[1])).astype(np.float32) * 0.05
    spec = SparsitySpec.parse("0.6")
    first = run_refine(H, W, wanda_keep(H, W, spec), spec, 0.01)
    keep2 = wanda_keep(H, W2, spec)
    alone = run_refine(H, W2, keep2, spec, 0.01)
    sel2 = SelectionResult(jnp.asarray(keep2), jnp.asarray(np.where(keep2, W2, 0)))
    stats = LinearStats(jnp.asarray(H))
    shared = refine_alps(
        jnp.asarray(W2), sel2, stats, spec, RefineSettings(method="alps"), TIGHT, damp=0.01, factor=first.factor
    )
    np.testing.assert_array_equal(np.asarray(shared.selection.keep_mask), np.asarray(alone.selection.keep_mask))
    np.testing.assert_array_equal(np.asarray(shared.selection.weight), np.asarray(alone.selection.weight))
    assert shared.factor is first.factor
    small = factor_hessian(jnp.asarray(H[:8, :8]), jnp.asarray(0.01))
    with pytest.raises(RefineError, match=r"shared factorisation is for a \(8, 8\) H"):
        refine_alps(jnp.asarray(W2), sel2, stats, spec, damp=0.01, factor=small, where="x")


def _cfg(**over):
    cfg = default_config()
    for k, v in over.items():
        node = cfg
        *path, leaf = k.split(".")
        for p in path:
            node = node[p]
        node[leaf] = v
    return cfg


@pytest.mark.parametrize(
    "over,needle",
    [
        ({"refine.method": "nope"}, "unknown refine.method 'nope'; available: alps, none"),
        ({"refine.method": "alps", "weight_update": "own"}, "refine.method=alps needs weight_update optima or adam"),
        ({"refine.method": "alps", "refine.rho": 0.0}, "refine.rho must be a finite number > 0"),
        ({"refine.method": "alps", "refine.max_iter": 0}, "refine.max_iter must be an integer >= 1"),
    ],
)
def test_config_errors(tmp_path, over, needle):
    cfg = _cfg(model=str(tmp_path / "m.gguf"), output_dir=str(tmp_path / "out"), **over)
    (tmp_path / "m.gguf").write_bytes(b"")
    with pytest.raises(OptimaError) as e:
        validate(cfg)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert sorted(REFINERS) == ["alps", "none"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama", "llama")


@pytest.mark.parametrize("sparsity,validation", [("0.7", ""), ("2:4", "holdout")])
def test_pipeline_with_refinement(llama, tmp_path, monkeypatch, sparsity, validation):
    """A tiny LLaMA pruned by the whole pipeline with refine.method=alps: the run finishes, the masks have the
    pattern, every report row carries the refinement's numbers, and the linears of one input share one
    factorisation of H (4 per block: q/k/v, o, gate/up, down)."""
    from optima_jax import checkpoint, pipeline, refine

    calls = []
    real = refine.factor_hessian
    monkeypatch.setattr(refine, "factor_hessian", lambda H, damp: calls.append(H.shape) or real(H, damp))

    out = tmp_path / "run"
    cfg = _cfg(
        model=str(llama),
        output_dir=str(out),
        sparsity=sparsity,
        **{
            "refine.method": "alps",
            "calibration.source": str(tiny.shared_text("wiki_train.txt")),
            "calibration.nsamples": 8,
            "calibration.seqlen": 32,
            "calibration.micro_batch": 4,
            "calibration.validation_source": validation,
            "calibration.validation_fraction": 0.25,
        },
    )
    validate(cfg)
    pipeline.run(cfg)
    masks = checkpoint.restore_masks(out)
    pruned = checkpoint.flatten(checkpoint.restore_params(out))
    rows = json.loads((out / "report.json").read_text())["linears"]
    assert len(rows) == len(masks) == 7 * 3
    assert len(calls) == 4 * 3, calls
    spec = SparsitySpec.parse(sparsity)
    for name, keep in masks.items():
        assert not np.any(np.asarray(pruned[name])[~keep]), name
        if spec.kind == "nm":
            assert np.all(keep.reshape(-1, spec.m).sum(axis=1) == spec.n), name
        else:
            assert np.all((~keep).sum(axis=1) == int(keep.shape[1] * spec.ratio)), name
    used = 0
    for r in rows:
        assert r["refine"] == "alps"
        for k in ("err_update_start", "err_update_refined", "refine_changed", "refine_rows", "seconds_refine"):
            assert r[k] is not None, (k, r)
        assert (r["val_err_update_refined"] is not None) == bool(validation)
        if r["refine_used"]:
            used += 1
            assert r["refine_changed"] > 0 and r["refine_reason"] == ""
            assert r["err_update"] == r["err_update_refined"]
            if not validation:
                assert r["err_update_refined"] < r["err_update_start"]
            else:
                assert r["val_err_update_refined"] < r["val_err_update_start"]
        else:
            assert r["refine_reason"] and r["err_update"] == r["err_update_start"]
    assert used > 0  # refinement changed at least some linears
