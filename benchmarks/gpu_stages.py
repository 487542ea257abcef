"""The stages of benchmarks/gpu_suite.sh, one process each, each writing one JSON (seconds, peak memory, numbers).

  models   random-weight checkpoints in real models' shapes, built from config values (no hub): SmolLM2-135M,
           Gemma 3 270M and LLaMA-3.2-1B (--smoke: the same families at tiny sizes), with a byte-level tokenizer
  engine   the sequential engine (Hessians, Wanda masks without an update, write-back, next inputs) on one model
  solver   solve_rows (exact, the default; the paper's rAPDHG on a row subset) on full-size layers of LLaMA-3.2-1B
           with H = XᵀX of correlated heavy-tailed activations, and the mask refiner (refine.method=alps) from
           the same mask after that exact solve (its time against the solve's: issue 30's cost goal)
  e2e      `optima-prune` (Wanda 50% + OPTIMA, the llama3_2_1b config) on the 1B-shaped checkpoint, in process
  report   gather the stage JSONs and the shell's stage records into gpu_suite.json and gpu_suite.md

Random weights time the work and exercise every path; they say nothing about quality. Peak device memory is
the device allocator's peak (None where the backend has no allocator statistics, e.g. CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Published config values of the models whose shapes the suite uses (HF config.json keys). Special-token ids
# are the byte tokenizer's (below), so windows and BOS rules work without the real tokenizers.
_SPECIAL = dict(bos_token_id=257, eos_token_id=258, pad_token_id=259)
CONFIGS = {
    "smollm2_135m": dict(
        model_type="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        hidden_act="silu",
        **_SPECIAL,
    ),
    "gemma3_270m": dict(
        model_type="gemma3_text",
        vocab_size=262144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        query_pre_attn_scalar=256,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        rope_local_base_freq=10000.0,
        sliding_window=512,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)],
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        **_SPECIAL,
    ),
    "llama3_2_1b": dict(
        model_type="llama",
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=32.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
        tie_word_embeddings=True,
        hidden_act="silu",
        **_SPECIAL,
    ),
}
# --smoke: the same families, tiny
SMOKE = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)
SMOKE_EXTRA = {
    "gemma3_270m": dict(
        query_pre_attn_scalar=16, sliding_window=16, layer_types=["sliding_attention", "full_attention"]
    )
}


def jax_jit_static(fn, static_argnums):
    """jax.jit, imported when first used (the models stage needs no jax import)."""
    import jax

    return jax.jit(fn, static_argnums=static_argnums)


def peak_device_mb():
    """The device allocator's peak (MiB) of this process, or None where the backend keeps no statistics."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else round(peak / 2**20, 1)


def peak_host_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def device_name():
    import jax

    d = jax.local_devices()[0]
    return f"{d.platform}: {getattr(d, 'device_kind', str(d))} x{jax.local_device_count()}"


def write_json(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1, default=str))
    print(json.dumps(obj, default=str)[:2000], flush=True)


# ------------------------------------------------------------------------------------------------ models


def byte_tokenizer(path: Path):
    """A byte-level tokenizer (256 byte tokens, then <unk> <bos> <eos> <pad>): no training, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<unk>", "<bos>", "<eos>", "<pad>"])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(str(path))


def write_random_checkpoint(path: Path, hf: dict, seed: int = 0) -> dict:
    """config.json + model.safetensors (float32, N(0, 0.02²) matrices, unit norm scales) + the byte tokenizer.
    Tensor names and shapes come from the model family's own `expected_shapes`."""
    import numpy as np
    from safetensors.numpy import save_file

    from optima_jax.models.registry import config_from_hf, params_module

    cfg = config_from_hf(hf)
    shapes = params_module(cfg).expected_shapes(cfg)
    rng = np.random.default_rng(seed)
    zero_centred_norms = cfg.model_type.startswith("gemma")  # Gemma scales by (1 + w)
    tensors = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            norm = "norm" in name
            tensors[name] = np.full(shape, 0.0 if (not norm or zero_centred_norms) else 1.0, np.float32)
        else:
            a = rng.standard_normal(shape, dtype=np.float32)
            a *= 0.02
            tensors[name] = a
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf, indent=1))
    save_file(tensors, str(path / "model.safetensors"))
    byte_tokenizer(path)
    return {"params": int(sum(int(np.prod(s)) for s in shapes.values())), "tensors": len(shapes)}


def cmd_models(a):
    t0 = time.perf_counter()
    out = {"stage": "models", "models": {}}
    for name in a.names.split(","):
        hf = dict(CONFIGS[name])
        if a.smoke:
            hf.update(SMOKE, **SMOKE_EXTRA.get(name, {}))
        t = time.perf_counter()
        info = write_random_checkpoint(Path(a.dir) / name, hf)
        out["models"][name] = {**info, "seconds": round(time.perf_counter() - t, 2)}
    out.update(seconds=round(time.perf_counter() - t0, 2), peak_host_mb=peak_host_mb())
    write_json(a.json, out)


# ------------------------------------------------------------------------------------------------ engine


def cmd_engine(a):
    import jax.numpy as jnp

    from _common import calibration_ids, engine_blocks
    from optima_jax import models
    from optima_jax.config import default_config, resolve_dtype

    t0 = time.perf_counter()
    cfg = default_config()
    cfg.selector, cfg.weight_update = "wanda", "none"  # the engine's own time: no solver
    dtype = a.dtype or resolve_dtype(cfg.dtype)
    micro_batch = a.micro_batch or int(cfg.calibration.micro_batch)
    loaded = models.load_model(a.model, dtype=dtype)
    model = models.build_model(loaded.config, loaded.params, dtype=getattr(jnp, dtype))
    ids = calibration_ids(loaded, a.text, a.nsamples, a.seqlen)
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    rows = engine_blocks(model, loaded.config, ids, cfg, a.blocks, 3, micro_batch=micro_batch, progress=False)
    blocks_s = time.perf_counter() - t1
    per = lambda r: r["hessians_s"] + r["prune_s"] + r["forward_s"]  # noqa: E731
    steady = rows[1:] or rows
    mean = lambda k: round(sum(r[k] for r in steady) / len(steady), 3)  # noqa: E731
    n_layers = loaded.config.num_layers
    out = {
        "stage": "engine",
        "model": Path(a.model).name,
        "tokens": f"{a.nsamples} x {a.seqlen}",
        "dtype": dtype,
        "micro_batch": micro_batch,
        "setup_s": round(setup_s, 2),
        "first_block_s": round(per(rows[0]), 3),
        "block_s": round(sum(per(r) for r in steady) / len(steady), 3),
        "hessians_s": mean("hessians_s"),
        "forward_s": mean("forward_s"),
        "prune_s": mean("prune_s"),
        "projected_all_blocks_s": round(per(rows[0]) + (n_layers - 1) * sum(per(r) for r in steady) / len(steady), 1),
        "num_layers": n_layers,
        "blocks": rows,
        "seconds": round(time.perf_counter() - t0, 2),
        "blocks_wall_s": round(blocks_s, 2),
        "peak_device_mb": peak_device_mb(),
        "peak_host_mb": peak_host_mb(),
        "device": device_name(),
    }
    write_json(a.json, out)


# ------------------------------------------------------------------------------------------------ solver


@partial(jax_jit_static, static_argnums=(0, 1, 2))
def synthetic_hessian(n: int, tokens: int, seed: int):
    """H = XᵀX (float32, on the device) for correlated heavy-tailed activations (a log-normal scale mixture of
    normals) with outlier channels."""
    import jax
    import jax.numpy as jnp

    k1, k2, k3, k4, k5 = jax.random.split(jax.random.PRNGKey(seed), 5)
    mix = jnp.eye(n) + jax.random.normal(k1, (n, n)) / jnp.sqrt(n)
    scale = jnp.exp(0.7 * jax.random.normal(k2, (n,))) * 0.5
    scale = scale.at[jax.random.choice(k3, n, (4,), replace=False)].multiply(20.0)
    Z = jax.random.normal(k4, (tokens, n)) * jnp.exp(0.5 * jax.random.normal(k5, (tokens, 1)))
    X = jnp.matmul(Z, mix * scale[None, :], precision=jax.lax.Precision.HIGHEST)
    return jnp.matmul(X.T, X, precision=jax.lax.Precision.HIGHEST)


def _timed(fn, reps=1):
    """(seconds of the fastest of `reps` calls after one compiling call, result)."""
    import jax

    jax.block_until_ready(fn())
    best, res = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        res = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best, res


def cmd_solver(a):
    import jax
    import jax.numpy as jnp

    from optima_jax.config import default_config
    from optima_jax.models.hf_names import linear_shapes
    from optima_jax.models.registry import config_from_hf
    from optima_jax.qp import solve_rows
    from optima_jax.refine import refine_alps
    from optima_jax.selectors import LinearStats, get_selector

    t0 = time.perf_counter()
    hf = dict(CONFIGS["llama3_2_1b"])
    if a.smoke:
        hf.update(SMOKE)
    shapes = linear_shapes(config_from_hf(hf))
    damp = float(default_config().solver.damp)
    wanda = get_selector("wanda")
    layers = []
    for name in a.layers.split(","):
        out_f, in_f = shapes[name]
        H = synthetic_hessian(in_f, max(2 * in_f, a.min_tokens), seed=len(layers))
        W = 0.02 * jax.random.normal(jax.random.PRNGKey(100 + len(layers)), (out_f, in_f))
        stats = LinearStats(H=H, n_tokens=max(2 * in_f, a.min_tokens))
        sel = wanda(W, stats, "0.5")
        keep = sel.keep_mask
        s_exact, res = _timed(lambda: solve_rows(H, W, keep, damp=damp), reps=2)
        row = {
            "linear": name,
            "shape": [out_f, in_f],
            "exact_s": round(s_exact, 3),
            "exact_iterations_mean": float(jnp.mean(res.iterations)),
            "exact_converged": float(jnp.mean(res.converged)),
        }
        if a.refine:  # the refiner as the pruner runs it: from the selector's mask, given the exact solve
            s_ref, ref = _timed(lambda: refine_alps(W, sel, stats, "0.5", damp=damp, start_weight=res.weight))
            ref_info = ref.info
            row.update(
                refine_s=round(s_ref, 3),
                refine_over_exact=round(s_ref / s_exact, 2),
                refine_iterations=ref_info["iterations"],
                refine_admm_s=round(ref_info["seconds_admm"], 3),
            )
        sub = min(a.rapdhg_rows, out_f) if len(layers) < a.rapdhg_layers else 0
        if sub:
            kw = dict(method="rapdhg", damp=0.0, n_tokens=int(stats.n_tokens))
            s_pd, pd = _timed(lambda: solve_rows(H, W[:sub], keep[:sub], **kw))
            row.update(
                rapdhg_rows=sub,
                rapdhg_s=round(s_pd, 3),
                rapdhg_whole_layer_s=round(s_pd * out_f / sub, 2),
                rapdhg_iterations_mean=float(jnp.mean(pd.iterations)),
                rapdhg_optimal=float(jnp.mean(pd.converged)),
            )
        print(row, flush=True)
        layers.append(row)
    out = {
        "stage": "solver",
        "damp": damp,
        "layers": layers,
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_device_mb": peak_device_mb(),
        "peak_host_mb": peak_host_mb(),
        "device": device_name(),
    }
    write_json(a.json, out)


# ------------------------------------------------------------------------------------------------ e2e


def cmd_e2e(a):
    from optima_jax.prune import main

    argv = [
        "optima-prune",
        "--config",
        "llama3_2_1b",
        f"--config.model={a.model}",
        f"--config.calibration.source={a.text}",
        f"--config.calibration.nsamples={a.nsamples}",
        f"--config.calibration.seqlen={a.seqlen}",
        f"--config.eval.source={a.eval_text}",
        f"--config.eval.seqlen={a.seqlen}",
        f"--config.eval.max_windows={a.eval_windows}",
        f"--config.output_dir={a.run_dir}",
        "--config.overwrite=True",
        "--config.selector=wanda",
        "--config.weight_update=optima",
        *a.extra,
    ]
    t0 = time.perf_counter()
    rc = main(argv)
    wall = time.perf_counter() - t0
    report = Path(a.run_dir) / "report.json"
    rep = json.loads(report.read_text()) if report.exists() else {}
    rows = rep.get("linears", [])
    out = {
        "stage": "e2e",
        "argv": argv[1:],
        "rc": rc,
        "seconds": round(wall, 2),
        "timings": {k: round(v, 2) for k, v in rep.get("timings", {}).items() if isinstance(v, (int, float))},
        "linears": len(rows),
        "skipped_linears": sum(bool(r.get("skipped")) for r in rows),
        "mean_ratio": (
            round(sum(r["ratio"] for r in rows if r.get("ratio")) / max(1, sum(1 for r in rows if r.get("ratio"))), 4)
            if rows
            else None
        ),
        "perplexity": rep.get("perplexity"),
        "peak_device_mb": peak_device_mb(),
        "peak_host_mb": peak_host_mb(),
        "device": device_name(),
    }
    write_json(a.json, out)
    if rc != 0:
        sys.exit(rc)


# ------------------------------------------------------------------------------------------------ report


def _junit_counts(path: Path):
    import xml.etree.ElementTree as ET

    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    c = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    c["passed"] = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    c["failed"] = [
        f"{tc.get('classname')}::{tc.get('name')}"
        for tc in root.iter("testcase")
        if tc.find("failure") is not None or tc.find("error") is not None
    ]
    return c


def _e2e_progress(run_dir: Path):
    """Blocks finished by a (possibly killed) e2e run, from its log.jsonl."""
    log = run_dir / "log.jsonl"
    if not log.exists():
        return None
    blocks = [json.loads(line)["msg"] for line in log.read_text().splitlines() if '"block ' in line]
    return {"blocks_logged": len(blocks), "last": blocks[-1] if blocks else None}


def cmd_report(a):
    work, out = Path(a.work), Path(a.out)
    records = [json.loads(line) for line in (work / "stages.jsonl").read_text().splitlines() if line.strip()]
    stages = {}
    for rec in records:
        name = rec["stage"]
        detail = work / f"{name}.json"
        if detail.exists():
            rec = {**json.loads(detail.read_text()), **rec}
        if name == "tests":
            rec["pytest"] = _junit_counts(work / "tests.xml")
        if name == "e2e" and rec.get("status") != "ok":
            rec["progress"] = _e2e_progress(work / "e2e_run")
        stages[name] = rec
    meta = json.loads((work / "meta.json").read_text()) if (work / "meta.json").exists() else {}
    result = {**meta, "stages": stages}
    (out / "gpu_suite.json").write_text(json.dumps(result, indent=1, default=str))
    lines = [
        f"# gpu_suite ({meta.get('mode', '?')}): {meta.get('device', '?')}",
        "",
        f"jax {meta.get('jax', '?')}, total {meta.get('total_s', '?')} s of a {meta.get('budget_s', '?')} s budget",
        "",
        "| stage | status | seconds | peak device MiB | peak host MiB | numbers |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in stages.items():
        nums = ""
        if name.startswith("engine") and "block_s" in r:
            nums = (
                f"{r['model']} {r['tokens']} {r['dtype']}: {r['block_s']} s/block (hessians {r['hessians_s']}, "
                f"forward {r['forward_s']}), first block {r['first_block_s']} s, "
                f"all {r['num_layers']} blocks ≈ {r['projected_all_blocks_s']} s"
            )
        elif name == "solver" and "layers" in r:
            nums = "; ".join(
                f"{x['linear'].split('.')[-1]} {x['shape'][0]}x{x['shape'][1]}: exact {x['exact_s']} s"
                + (f", rAPDHG ≈ {x['rapdhg_whole_layer_s']} s/layer" if "rapdhg_whole_layer_s" in x else "")
                + (f", refine +{x['refine_s']} s ({x['refine_over_exact']}x exact)" if "refine_s" in x else "")
                for x in r["layers"]
            )
        elif name == "e2e" and "timings" in r:
            t = r["timings"]
            nums = (
                f"total {t.get('total_s')} s (load {t.get('load_s')}, hessians {t.get('hessians_s')}, "
                f"prune {t.get('prune_s')}, forward {t.get('forward_s')}); {r.get('linears')} linears, "
                f"{r.get('skipped_linears')} skipped"
            )
        elif name == "tests" and r.get("pytest"):
            p = r["pytest"]
            nums = f"{p['passed']} passed, {p['failures'] + p['errors']} failed, {p['skipped']} skipped"
            if p["failed"]:
                nums += ": " + ", ".join(p["failed"][:8])
        elif r.get("note"):
            nums = r["note"]
        if r.get("progress"):
            nums += f" progress: {r['progress']}"
        cell = lambda k: "" if r.get(k) is None else r[k]  # noqa: E731
        lines.append(
            f"| {name} | {r.get('status')} | {r.get('wall_s')} | {cell('peak_device_mb')} | {cell('peak_host_mb')} | {nums} |"
        )
    (out / "gpu_suite.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("models")
    p.add_argument("--dir", required=True)
    p.add_argument("--names", default=",".join(CONFIGS))
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json", required=True)
    p = sub.add_parser("engine")
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=0, help="0 = the run default, calibration.micro_batch")
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--dtype", default="", help="activation dtype ('' = the run default, config dtype)")
    p.add_argument("--json", required=True)
    p = sub.add_parser("solver")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--min-tokens", type=int, default=4096)
    p.add_argument("--rapdhg-rows", type=int, default=128)
    p.add_argument("--layers", default="self_attn.q_proj,self_attn.o_proj,mlp.gate_proj,mlp.down_proj")
    p.add_argument("--rapdhg-layers", type=int, default=99, help="run rAPDHG on the first this many layers")
    p.add_argument("--refine", type=int, default=1, help="1: also time refine.method=alps on every layer")
    p.add_argument("--json", required=True)
    p = sub.add_parser("e2e")
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--eval-text", default="")
    p.add_argument("--eval-windows", type=int, default=2)
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("extra", nargs="*", help="more --config.key=value settings")
    p = sub.add_parser("report")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    a = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    {"models": cmd_models, "engine": cmd_engine, "solver": cmd_solver, "e2e": cmd_e2e, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
