"""The pruning pipeline as one library call, ``run(cfg)`` on a validated config:
load -> calibrate -> for each block: Hessians -> masks -> update -> write back -> next inputs -> resume point
-> final checkpoint (+ HF export) -> perplexity and reports. Rerunning the same config after a kill resumes at
the next unfinished block. The command line around it is ``optima_jax.prune``."""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from optima_jax import checkpoint, data, evaluate, models, report, sharding
from optima_jax.engine import check_dense_finite, run_sequential
from optima_jax.errors import OptimaError, is_device_oom
from optima_jax.fileio import atomic_write_text
from optima_jax.checkpoint import exports
from optima_jax.config import resolve_dtype
from optima_jax.models import api
from optima_jax.models.loading.core import generation_config, sentencepiece_model
from optima_jax.pruner import make_pruner
from optima_jax.run_log import setup_logging
from optima_jax.sparsity import SparsitySpec, select_linears

log = logging.getLogger("optima_jax")


def check_finite_params(params: dict, source: str):
    """Non-finite weights are an error naming the tensor, before any work starts."""
    for name, w in params.items():
        if not np.all(np.isfinite(np.asarray(w, dtype=np.float32))):
            raise OptimaError(f"non-finite values in weight {name} of {source}")


def _versions() -> dict:
    out = {}
    for p in ("optima_jax", "jax", "flax", "orbax-checkpoint", "transformers"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def linears_in_scope(config, prune_scope: str) -> set[str]:
    """The block-relative linear names (``self_attn.q_proj``, ...) that ``prune_scope`` (all | mlp) prunes."""
    return set(select_linears(api.linear_names(config), prune_scope, api.mlp_linears(config)))


def prune_blocks(
    model,
    config,
    ids,
    cfg,
    *,
    val_ids=None,
    scope: set[str] | None = None,
    data_mesh=None,
    rows_mesh=None,
    start_block: int = 0,
    hidden=None,
    hidden_val=None,
    on_block_done=None,
    progress: bool = True,
) -> tuple[list[dict], dict[str, float]]:
    """Prune ``model`` in place, block by block from ``start_block``, with ``cfg``'s selector, update and solver
    on the linears of ``scope`` (default: ``cfg.prune_scope``). ids int [n, T]: calibration windows; val_ids:
    validation windows (auto damping, the safeguard). ``on_block_done(done)`` is called after each block
    (engine.BlockDone). Returns (report rows of the linears pruned here, seconds summed over the blocks for
    hessians_s, prune_s, forward_s, select_s, update_s)."""
    scope = linears_in_scope(config, cfg.prune_scope) if scope is None else scope
    rows: list[dict] = []
    times = {"hessians_s": 0.0, "prune_s": 0.0, "forward_s": 0.0}

    def done(d):
        if on_block_done is not None:
            on_block_done(d)
        rows.extend(r.row for r in d.results.values())
        for k in times:
            times[k] += d.timings[k]

    run_sequential(
        model,
        config,
        ids,
        make_pruner(cfg, rows_mesh),
        val_ids=val_ids,
        linear_filter=lambda n: n in scope,
        micro_batch=int(cfg.calibration.micro_batch),
        mesh=data_mesh,
        shard_params=bool(cfg.mesh.shard_params),
        start_block=start_block,
        hidden=hidden,
        hidden_val=hidden_val,
        hidden_on=cfg.hidden_states_on,
        on_block_done=done,
        progress=progress,
    )
    times["select_s"] = sum(r["seconds_select"] for r in rows)
    times["update_s"] = sum(r["seconds_update"] for r in rows)
    times["refine_s"] = sum(r.get("seconds_refine", 0.0) for r in rows)
    return rows, times


def _write_model_files(directory: Path, source: str, tokenizer) -> None:
    """The files of the source model that serving needs next to the params: its tokenizer, its SentencePiece
    model (for the gemma library) and its generation config."""
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory / "tokenizer"))
    spm = sentencepiece_model(source)
    if spm:
        (directory / exports.SPM_FILE).write_bytes(spm)
    gen = generation_config(source)
    if gen:
        atomic_write_text(directory / exports.GENERATION_FILE, json.dumps(gen, indent=1))


def run(cfg) -> dict:
    """Run a validated config end to end. Returns a summary dict (perplexities, timings, paths).

    The run's logging (console + out/log.jsonl, library logs and thread exceptions into the file) lasts as long
    as the call: loggers and ``threading.excepthook`` are restored when it returns or raises."""
    restores: list = []
    try:
        return _run(cfg, restores)
    except Exception as e:
        details = logging.getLogger("optima_jax.threads")  # the log file only, once setup_logging has run
        if is_device_oom(e) and details.handlers:
            details.error("out of device memory", exc_info=(type(e), e, e.__traceback__))
        raise
    finally:
        for restore in restores:
            restore()


def _run(cfg, restores: list) -> dict:
    t_start = time.perf_counter()
    sharding.maybe_initialize_distributed(cfg.distributed)  # before anything asks JAX for its backend
    cfg.dtype = resolve_dtype(cfg.dtype)  # "auto" is decided once, and the run's identity records the result
    cfg_dict = cfg.to_dict()
    out = Path(cfg.output_dir).absolute()
    main = sharding.is_main_process()
    fingerprint = checkpoint.run_fingerprint(cfg_dict)
    checkpoint.check_output_dir(out, fingerprint, cfg.overwrite)
    data_mesh, rows_mesh = sharding.make_meshes(cfg.mesh.data, cfg.mesh.rows)
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[cfg.dtype]
    timings: dict[str, float] = {}

    t = time.perf_counter()
    loaded = models.load_model(cfg.model, dtype=cfg.dtype)
    model = models.build_model(loaded.config, loaded.params, dtype=dtype)
    config, tokenizer = loaded.config, loaded.tokenizer
    timings["load_s"] = time.perf_counter() - t
    add_bos = config.adds_bos(tokenizer) if cfg.calibration.add_bos < 0 else bool(cfg.calibration.add_bos)
    check_finite_params(loaded.params, cfg.model)
    exports.check_targets(config, cfg.export_gemma)
    scope = linears_in_scope(config, cfg.prune_scope)
    spec = SparsitySpec.parse(cfg.sparsity)
    for name in sorted(scope):
        spec.validate_for(
            int(api.get_linear(model, 0, name).shape[1]),
            where=api.weight_name(config, 0, name).replace(".0.", ".*.", 1),
        )

    t = time.perf_counter()
    cal = cfg.calibration
    ids, val_ids = _calibration(cfg, tokenizer, add_bos)
    timings["calibration_data_s"] = time.perf_counter() - t

    # Non-finite activations of the dense model itself are reported now, naming the block, not mid-run.
    check_dense_finite(model, config, ids[: min(2, ids.shape[0])])

    # Everything that can be checked before work starts has been: only now is the output directory written.
    # Multi-process: process 0 claims (and may clear) the directory; the others wait and take its answer.
    resumable = checkpoint.claim_output_dir(out, fingerprint, cfg.overwrite, cfg_dict) if main else False
    sharding.sync("optima_jax:claim_output_dir")
    resumable = bool(sharding.broadcast_from_main(resumable))
    restores.append(setup_logging(out, main))
    log.info("run %s -> %s%s", fingerprint, out, " (resuming)" if resumable else "")
    log.info(
        "devices: process %d of %d, %d global / %d local devices; data axis %d, rows axis %d",
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
        jax.local_device_count(),
        data_mesh.shape["data"],
        rows_mesh.shape["rows"],
    )

    ppl = {}
    eval_file = out / "eval_dense.json"
    if cfg.eval.source:
        # The dense perplexity is kept with the eval settings it was measured under (eval settings are not
        # part of the run's fingerprint) and reused only by a rerun with the same ones. Process 0 decides, so
        # every process takes the same branch.
        settings = _dense_eval_settings(cfg, tokenizer, add_bos)
        reuse = bool(
            sharding.broadcast_from_main(_stored_dense_ppl(eval_file, settings) is not None if main else False)
        )
        if reuse:
            ppl["dense"] = _stored_dense_ppl(eval_file, settings)
        else:
            ppl["dense"] = _perplexity(model, config, tokenizer, cfg, add_bos)
            if main:
                atomic_write_text(eval_file, json.dumps({"ppl": ppl["dense"], "settings": settings}, indent=1))
        log.info(
            "dense perplexity on %s: %.3f%s",
            cfg.eval.source,
            ppl["dense"],
            f" (from {eval_file.name})" if reuse else "",
        )

    log.info(
        "calibration: %d x %d tokens from %s%s",
        ids.shape[0],
        ids.shape[1],
        cal.source,
        f"; validation {val_ids.shape[0]} x {val_ids.shape[1]}" if val_ids is not None else "",
    )

    progress = checkpoint.Progress(out)
    rows: list[dict] = []
    masks: dict[str, np.ndarray] = {}
    start, hidden, hidden_val = 0, None, None
    if resumable:
        latest = progress.latest(data_mesh)
        if latest is not None:
            start, hidden, hidden_val, blocks = latest
            for i, (weights, bmasks, brows) in enumerate(blocks):
                for name, w in weights.items():
                    api.set_linear(model, i, name, jnp.asarray(w))
                masks.update({api.weight_name(config, i, n): m for n, m in bmasks.items()})
                rows.extend(brows)
            log.info("resuming at block %d of %d", start, config.num_layers)
            if val_ids is None:
                hidden_val = None

    def on_block_done(done):
        weights = {n: np.asarray(r.weight.astype(dtype)) for n, r in done.results.items()}
        bmasks = {n: np.asarray(r.keep_mask) for n, r in done.results.items()}
        brows = [r.row for r in done.results.values()]
        progress.save_block(done.index, weights, bmasks, brows, done.hidden, done.hidden_val)
        rows.extend(brows)
        masks.update({api.weight_name(config, done.index, n): m for n, m in bmasks.items()})
        log.info(
            "block %d done: %s",
            done.index,
            json.dumps(
                {
                    "peak_host_mem_mb": round(done.timings["peak_host_mem_mb"]),
                    "mean_ratio": _mean([r["ratio"] for r in brows]),
                    "skipped": sum(r["skipped"] for r in brows),
                }
            ),
        )

    _, block_times = prune_blocks(
        model,
        config,
        ids,
        cfg,
        val_ids=val_ids,
        scope=scope,
        data_mesh=data_mesh,
        rows_mesh=rows_mesh,
        start_block=start,
        hidden=hidden,
        hidden_val=hidden_val,
        on_block_done=on_block_done,
        progress=main,
    )
    progress.close()
    timings.update(block_times)
    timings["select_s"] = sum(r["seconds_select"] for r in rows)
    timings["update_s"] = sum(r["seconds_update"] for r in rows)
    timings["refine_s"] = sum(r.get("seconds_refine", 0.0) for r in rows)

    params = models.to_params_dict(model)
    metadata = {
        "config": cfg_dict,
        "fingerprint": fingerprint,
        "hf_config": config.hf_config,
        "model_type": config.model_type,
        "versions": _versions(),
        "linears": rows,
        "block_linears": sorted(api.linear_names(config)),
        "timings": timings,
    }
    checkpoint.save_pruned(
        out,
        params,
        masks if cfg.save_masks else {},
        metadata,
        write_extra=lambda d: _write_model_files(d, loaded.source, tokenizer),
    )
    if (cfg.export_hf or cfg.export_gemma) and main:
        hf_dir, gemma_dir = (out / "hf" if cfg.export_hf else None), (out / "gemma" if cfg.export_gemma else None)
        exports.write_exports(
            config, params, tokenizer, metadata, out / "checkpoint", hf_dir=hf_dir, gemma_dir=gemma_dir
        )
        for d in (hf_dir, gemma_dir):
            if d is not None:
                log.info("export written to %s", d)

    if cfg.eval.source:
        ppl["pruned"] = _perplexity(model, config, tokenizer, cfg, add_bos)
        if cfg.eval.mask_only and masks:
            # Ablation of the update: the dense weights with this run's masks, no weight update.
            masked = {
                k: (np.where(np.asarray(masks[k]), np.asarray(v), 0) if k in masks else v)
                for k, v in loaded.params.items()
            }
            ppl["same masks, no update"] = _perplexity(
                models.build_model(config, masked, dtype=dtype), config, tokenizer, cfg, add_bos
            )
    timings["total_s"] = time.perf_counter() - t_start
    if main:
        report.write_reports(out, rows, timings, {**ppl, "source": cfg.eval.source} if ppl else None)
    sharding.sync("optima_jax:run_done")
    if main:
        print(report.summary_table(rows, timings, {f"{k} ({cfg.eval.source})": v for k, v in ppl.items()}))
        print(f"checkpoint: {out}  (restore: optima_jax.checkpoint.restore_params('{out}'))")
    return {"ppl": ppl, "timings": timings, "output_dir": str(out), "rows": rows}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return round(sum(xs) / len(xs), 4) if xs else None


def _calibration(cfg, tokenizer, add_bos):
    """-> (calibration ids [n, T], validation ids [n_val, T] or None)."""
    cal = cfg.calibration
    v = cal.validation_source
    if v == "holdout":
        n_val = max(1, int(round(cal.nsamples * cal.validation_fraction)))
        allw = data.calibration_windows(
            cal.source, tokenizer, nsamples=cal.nsamples + n_val, seqlen=cal.seqlen, seed=cal.seed, add_bos=add_bos
        )
        return np.asarray(allw[: cal.nsamples]), np.asarray(allw[cal.nsamples :])
    ids = data.calibration_windows(
        cal.source, tokenizer, nsamples=cal.nsamples, seqlen=cal.seqlen, seed=cal.seed, add_bos=add_bos
    )
    val = None
    if v:
        val = data.calibration_windows(
            v, tokenizer, nsamples=cal.validation_nsamples, seqlen=cal.seqlen, seed=cal.seed + 1, add_bos=add_bos
        )
    return np.asarray(ids), val if val is None else np.asarray(val)


def _dense_eval_settings(cfg, tokenizer, add_bos) -> dict:
    """Everything besides the model (fixed by the run's fingerprint) that the dense perplexity depends on."""
    return {
        "model": str(cfg.model),
        "dtype": str(cfg.dtype),
        "source": str(cfg.eval.source),
        "seqlen": int(cfg.eval.seqlen),
        "max_windows": int(cfg.eval.max_windows or 0),
        "bos_id": None if not add_bos or tokenizer.bos_token_id is None else int(tokenizer.bos_token_id),
    }


def _stored_dense_ppl(path: Path, settings: dict) -> float | None:
    """The dense perplexity stored in `path` if it was measured with `settings`, else None."""
    try:
        stored = json.loads(path.read_text())
        if stored.get("settings") == settings:
            return float(stored["ppl"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    return None


def _perplexity(model, config, tokenizer, cfg, add_bos) -> float:
    tokens = data.eval_tokens(cfg.eval.source, tokenizer)
    return float(
        evaluate.perplexity(
            model,
            tokens,
            seqlen=cfg.eval.seqlen,
            batch_size=cfg.eval.batch_size,
            max_windows=cfg.eval.max_windows or None,
            bos_id=tokenizer.bos_token_id if add_bos else None,
        )
    )
