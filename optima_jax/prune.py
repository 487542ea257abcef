"""`python -m optima_jax.prune --config configs/<model>.py [--config.key=value ...]`

Load → calibrate → for each block: Hessians → masks → update → write back → next inputs → checkpoint.
Rerunning the same command after a kill resumes at the next unfinished block.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from optima_jax.errors import OptimaError

log = logging.getLogger("optima_jax")


def check_finite_params(params: dict, source: str):
    """Non-finite weights are an error naming the tensor, before any work starts."""
    import numpy as np

    for name, w in params.items():
        if not np.all(np.isfinite(np.asarray(w, dtype=np.float32))):
            raise OptimaError(f"non-finite values in weight {name} of {source}")


_LIBRARY_LOGGERS = ("absl", "asyncio", "orbax", "concurrent.futures")


def setup_logging(out: Path, main: bool):
    """Console INFO lines plus a structured JSON-lines log in out/log.jsonl, for the duration of one run.

    Returns a function that puts every logger and ``threading.excepthook`` back as they were (``run`` calls it
    when it ends, so an in-process caller keeps its own logging)."""
    import threading

    names = ("optima_jax", "optima_jax.threads", "", *_LIBRARY_LOGGERS)
    saved = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate, logging.getLogger(n).level) for n in names
    }
    saved_hook = threading.excepthook
    opened: list[logging.Handler] = []

    def restore():
        for n, (handlers, propagate, level) in saved.items():
            lg = logging.getLogger(n)
            lg.handlers[:], lg.propagate = handlers, propagate
            lg.setLevel(level)
        threading.excepthook = saved_hook
        for h in opened:
            h.close()

    root = logging.getLogger("optima_jax")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    if not main:  # other processes of a multi-host run stay silent
        root.addHandler(logging.NullHandler())
        root.propagate = False
        return restore

    class JsonLines(logging.Handler):
        def __init__(self, path):
            super().__init__()
            self.path = path
            self.f = open(path, "a")

        def emit(self, rec):
            if self.f is None:
                return
            try:
                entry = {
                    "t": round(rec.created, 3),
                    "level": rec.levelname,
                    "logger": rec.name,
                    "msg": rec.getMessage(),
                }
                if rec.exc_info:
                    entry["exc"] = logging.Formatter().formatException(rec.exc_info)
                self.f.write(json.dumps(entry) + "\n")
                self.f.flush()
            except OSError as e:  # e.g. a full disk: keep the console log, stop the file log, say so once
                self.f = None
                print(f"warning: log file {self.path} is no longer written ({e.strerror or e})", file=sys.stderr)

        def close(self):
            if self.f is not None:
                self.f.close()
                self.f = None
            super().close()

    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    file_log = JsonLines(out / "log.jsonl")
    opened.append(file_log)
    root.addHandler(console)
    root.addHandler(file_log)
    root.propagate = False
    # Libraries' own logs (Orbax via absl, asyncio) and exceptions in their worker threads go to the file log
    # only: a failed write surfaces once, as our one-line error, with the details in log.jsonl.
    for name in _LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
    logging.getLogger().handlers[:] = [file_log]  # the root: every library logger that propagates
    threads = logging.getLogger("optima_jax.threads")
    threads.handlers.clear()
    threads.addHandler(file_log)
    threads.propagate = False
    threading.excepthook = lambda a: threads.error(
        "exception in thread %s", getattr(a.thread, "name", "?"), exc_info=(a.exc_type, a.exc_value, a.exc_traceback)
    )
    return restore


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for p in ("optima_jax", "jax", "flax", "orbax-checkpoint", "transformers"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def run(cfg) -> dict:
    """Run a validated config end to end. Returns a summary dict (perplexities, timings, paths).

    The run's logging (console + out/log.jsonl, library logs and thread exceptions into the file) lasts as long
    as the call: loggers and ``threading.excepthook`` are restored when it returns or raises."""
    restores: list = []
    try:
        return _run(cfg, restores)
    except Exception as e:
        details = logging.getLogger("optima_jax.threads")  # the log file only, once setup_logging has run
        if _is_device_oom(e) and details.handlers:
            details.error("out of device memory", exc_info=(type(e), e, e.__traceback__))
        raise
    finally:
        for restore in restores:
            restore()


def _run(cfg, restores: list) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from optima_jax import models
    from optima_jax.models import api
    from optima_jax import checkpoint, report, sharding
    from optima_jax.engine import run_sequential
    from optima_jax.pruner import make_pruner
    from optima_jax.sparsity import SparsitySpec, select_linears

    t_start = time.perf_counter()
    cfg_dict = cfg.to_dict()
    out = Path(cfg.output_dir).absolute()
    sharding.maybe_initialize_distributed(cfg.distributed)
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
    scope = set(select_linears(api.linear_names(config), cfg.prune_scope, api.mlp_linears(config)))
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
    from optima_jax.engine import check_dense_finite

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
                checkpoint.atomic_write_text(
                    eval_file, json.dumps({"ppl": ppl["dense"], "settings": settings}, indent=1)
                )
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

    block_times = {"hessians_s": 0.0, "prune_s": 0.0, "forward_s": 0.0}

    def on_block_done(done):
        weights = {n: np.asarray(r.weight.astype(dtype)) for n, r in done.results.items()}
        bmasks = {n: np.asarray(r.keep_mask) for n, r in done.results.items()}
        brows = [r.row for r in done.results.values()]
        progress.save_block(done.index, weights, bmasks, brows, done.hidden, done.hidden_val)
        rows.extend(brows)
        masks.update({api.weight_name(config, done.index, n): m for n, m in bmasks.items()})
        for k in block_times:
            block_times[k] += done.timings[k]
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

    run_sequential(
        model,
        config,
        ids,
        make_pruner(cfg, rows_mesh),
        val_ids=val_ids,
        linear_filter=lambda n: n in scope,
        micro_batch=int(cal.micro_batch),
        mesh=data_mesh,
        shard_params=bool(cfg.mesh.shard_params),
        start_block=start,
        hidden=hidden,
        hidden_val=hidden_val,
        hidden_on=cfg.hidden_states_on,
        on_block_done=on_block_done,
        progress=main,
    )
    progress.close()
    timings.update(block_times)
    timings["select_s"] = sum(r["seconds_select"] for r in rows)
    timings["update_s"] = sum(r["seconds_update"] for r in rows)

    params = models.to_params_dict(model)
    metadata = {
        "config": cfg_dict,
        "fingerprint": fingerprint,
        "hf_config": config.hf_config,
        "model_type": config.model_type,
        "versions": _versions(),
        "linears": rows,
        "timings": timings,
    }
    checkpoint.save_pruned(
        out,
        params,
        masks if cfg.save_masks else {},
        metadata,
        write_extra=None if tokenizer is None else lambda d: tokenizer.save_pretrained(str(d / "tokenizer")),
    )
    if cfg.export_hf and main:
        models.save_hf(out / "hf", config, params, tokenizer)
        log.info("HF export written to %s", out / "hf")

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
    import numpy as np
    from optima_jax import data

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
    from optima_jax import data, evaluate

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


_RESUME = "rerun the same command to resume from the last finished block"


def _resume_hint(cfg) -> str:
    """A clause saying that rerunning resumes, only when cfg's output directory holds this run's progress."""
    if cfg is None:
        return ""
    try:
        from optima_jax import checkpoint

        out = Path(cfg.output_dir).absolute()
        if checkpoint.has_progress(out, checkpoint.run_fingerprint(cfg.to_dict())):
            return f"; the finished blocks in {out} are kept: {_RESUME}"
    except Exception:  # the hint must never hide the error itself
        pass
    return ""


def _is_device_oom(e: BaseException) -> bool:
    """A JAX/XLA runtime error for exhausted device memory."""
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"JaxRuntimeError", "XlaRuntimeError"}) and "RESOURCE_EXHAUSTED" in str(e)


def _oom_message(e: BaseException, cfg) -> str:
    first = next((l.strip() for l in str(e).splitlines() if l.strip()), "RESOURCE_EXHAUSTED")[:200]
    settings = ""
    if cfg is not None:
        try:
            settings = (
                f"calibration.micro_batch (now {cfg.calibration.micro_batch}) or eval.batch_size (now "
                f"{cfg.eval.batch_size}), or set hidden_states_on=host (now {cfg.hidden_states_on}), "
                f"mesh.shard_params=True, a smaller solver.memory_budget_gb (now {cfg.solver.memory_budget_gb})"
                f" or dtype=bfloat16 (now {cfg.dtype})"
            )
        except Exception:
            settings = ""
    settings = settings or (
        "calibration.micro_batch or eval.batch_size, or set hidden_states_on=host, "
        "mesh.shard_params=True, a smaller solver.memory_budget_gb or dtype=bfloat16"
    )
    return f"out of device memory ({first}); to use less, lower {settings}"


def main(argv=None) -> int:
    from optima_jax.config import HelpRequested, parse_args, validate

    argv = sys.argv if argv is None else argv
    cfg = None
    try:
        cfg, _ = parse_args(argv)
    except HelpRequested as h:
        print(h)
        return 0
    except OptimaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        validate(cfg)
        run(cfg)
    except OptimaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read or write the checks could not foresee: a full disk, a lost mount
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}{_resume_hint(cfg)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = _resume_hint(cfg)
        print("interrupted" + (f": {_RESUME}" if hint else ""), file=sys.stderr)
        return 130
    except Exception as e:
        if not _is_device_oom(e):
            raise
        print(f"error: {_oom_message(e, cfg)}{_resume_hint(cfg)}", file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    """The ``optima-prune`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
