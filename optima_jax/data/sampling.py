"""Sampling windows: the SparseGPT/Wanda recipes over streams and documents, mixtures, BOS, and the
validation split. Entry points: ``calibration_windows``, ``eval_tokens``, ``split_validation``."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import numpy as np

from optima_jax.data.readers import Documents, TextStream, resolve
from optima_jax.data.sources import DataSourceError, SourceSpec, component_seed, interleave_order, mixture_counts
from optima_jax.data.sources import parse_source
from optima_jax.data.tokenize import encode_batch, to_int32, tokenize_documents, tokenize_stream

log = logging.getLogger(__name__)

MAX_DOC_TRIES = 100_000  # consecutive rejections before the document recipe gives up


def sample_stream_windows(tokens: np.ndarray, nsamples: int, length: int, rng: random.Random) -> np.ndarray:
    """int32 [nsamples, length]: `i = rng.randint(0, N - length - 1)`, window tokens[i:i+length]
    (SparseGPT/Wanda get_wikitext2). Needs N > length."""
    n = int(tokens.shape[0])
    out = np.empty((nsamples, length), np.int32)
    for s in range(nsamples):
        i = rng.randint(0, n - length - 1)
        out[s] = tokens[i : i + length]
    return out


def sample_document_windows(
    num_docs: int,
    get_tokens: Callable[[int], np.ndarray],
    nsamples: int,
    length: int,
    rng: random.Random,
    *,
    where: str = "",
    max_tries: int = MAX_DOC_TRIES,
) -> np.ndarray:
    """int32 [nsamples, length], the SparseGPT/Wanda get_c4 loop: draw `d = rng.randint(0, num_docs - 1)`
    until `len(get_tokens(d)) > length`, then `i = rng.randint(0, len - length - 1)`, window [i, i+length)."""
    out = np.empty((nsamples, length), np.int32)
    for s in range(nsamples):
        for _ in range(max_tries):
            d = rng.randint(0, num_docs - 1)
            toks = get_tokens(d)
            if toks.shape[0] > length:
                break
        else:
            raise DataSourceError(
                f"source '{where}': no document longer than {length} tokens in {max_tries} "
                f"random draws; use a smaller seqlen"
            )
        i = rng.randint(0, toks.shape[0] - length - 1)
        out[s] = toks[i : i + length]
    return out


# ----------------------------------------------------------------------------------------------
# public API


def _check_counts(nsamples, seqlen, seed, add_bos, tokenizer) -> int:
    if seqlen is None:
        raise DataSourceError(
            "seqlen is required (None given): set it explicitly (e.g. 2048); it never defaults "
            "to max_position_embeddings, which can need >100 GiB of activations (locuslab/wanda#44)"
        )
    for name, v in (("nsamples", nsamples), ("seqlen", seqlen), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise DataSourceError(f"{name} must be an integer, got {v!r}")
    if nsamples < 1:
        raise DataSourceError(f"nsamples must be >= 1, got {nsamples}")
    if seqlen < (2 if add_bos else 1):
        raise DataSourceError(f"seqlen must be >= {2 if add_bos else 1}, got {seqlen}")
    if add_bos:
        return _bos_id(tokenizer)
    return -1


def _bos_id(tokenizer) -> int:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataSourceError(f"add_bos=True but tokenizer '{name}' has no BOS token")
    return int(bos)


def _component_windows(
    spec: SourceSpec, tokenizer, *, nsamples: int, length: int, seed: int, split: str | None, text_field: str
) -> np.ndarray:
    src = resolve(spec, purpose="calib", split=split, text_field=text_field)
    rng = random.Random(seed)
    if isinstance(src, Documents):
        if src.local:
            toks = tokenize_documents(src.docs, tokenizer, desc=f"tokenizing {src.name}", key=src.key)
            longest = max((t.shape[0] for t in toks), default=0)
            if longest > length:
                return sample_document_windows(len(toks), toks.__getitem__, nsamples, length, rng, where=src.name)
            log.info(
                "source %s: no document has more than %d tokens (longest %d); sampling windows from "
                "the documents joined with blank lines instead",
                src.name,
                length,
                longest,
            )
            src = TextStream("\n\n".join(src.docs), src.key + ("joined",), src.name)
        else:
            memo: dict[int, np.ndarray] = {}

            def get(d: int) -> np.ndarray:
                if d not in memo:
                    memo[d] = to_int32(np.asarray(encode_batch(tokenizer, [src.docs[d]])[0], np.int64), src.name)
                return memo[d]

            return sample_document_windows(len(src.docs), get, nsamples, length, rng, where=src.name)
    tokens = tokenize_stream(src.text, tokenizer, desc=f"tokenizing {src.name}", key=src.key)
    needed = nsamples * length + 1
    if tokens.shape[0] < needed:
        raise DataSourceError(
            f"source '{src.name}' is too short: {tokens.shape[0]} tokens available, "
            f"{needed} needed for nsamples={nsamples} x {length} tokens"
        )
    return sample_stream_windows(tokens, nsamples, length, rng)


def calibration_windows(
    source,
    tokenizer,
    *,
    nsamples: int,
    seqlen: int | None,
    seed: int = 0,
    add_bos: bool = False,
    split: str | None = None,
    text_field: str = "text",
) -> np.ndarray:
    """int32 [nsamples, seqlen] calibration windows from `source` (syntax in the module docstring).

    add_bos: window = [tokenizer.bos_token_id] + seqlen-1 text tokens. split: dataset split for the hub
    sources (default train). text_field: JSONL field / parquet column. Same arguments -> same windows.
    """
    bos = _check_counts(nsamples, seqlen, seed, add_bos, tokenizer)
    comps = parse_source(source)
    length = seqlen - 1 if add_bos else seqlen
    counts = mixture_counts([c.weight for c in comps], nsamples)
    parts: list[np.ndarray] = []
    for k, (spec, count) in enumerate(zip(comps, counts)):
        if count == 0:
            log.info("source %s: weight gives 0 of %d samples, skipped", spec.text, nsamples)
            parts.append(np.zeros((0, length), np.int32))
            continue
        parts.append(
            _component_windows(
                spec,
                tokenizer,
                nsamples=count,
                length=length,
                seed=component_seed(int(seed), k),
                split=split,
                text_field=text_field,
            )
        )
    if len(comps) == 1:
        body = parts[0]
    else:
        body = np.stack([parts[k][j] for k, j in interleave_order(counts)])
    if add_bos:
        body = np.concatenate([np.full((nsamples, 1), bos, np.int32), body], axis=1)
    return np.ascontiguousarray(body, dtype=np.int32)


def eval_tokens(
    source, tokenizer, *, add_bos: bool = False, split: str | None = None, text_field: str = "text"
) -> np.ndarray:
    """int32 [N]: the whole evaluation text tokenized (no special tokens; BOS first if add_bos).
    wikitext2: "\\n\\n".join of the test split; c4: " ".join of 1100 validation documents; .txt: the (sliced)
    text; .jsonl/.parquet: records joined with "\\n\\n". A single source only (no mixtures)."""
    comps = parse_source(source)
    if len(comps) != 1:
        raise DataSourceError(f"eval source {source!r}: perplexity needs a single source, got {len(comps)} components")
    spec = comps[0]
    if spec.weight is not None:
        raise DataSourceError(f"eval source '{spec.text}': a weight makes no sense for a single evaluation source")
    src = resolve(spec, purpose="eval", split=split, text_field=text_field)
    tokens = tokenize_stream(src.text, tokenizer, desc=f"tokenizing {src.name}", key=src.key)
    if tokens.shape[0] == 0:
        raise DataSourceError(f"eval source '{spec.text}' has no tokens")
    if add_bos:
        tokens = np.concatenate([np.array([_bos_id(tokenizer)], np.int32), tokens])
    return tokens


def split_validation(windows: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, validation): the last round(fraction * n) windows (at least 1 when fraction > 0) are
    held out. Mixture windows are interleaved evenly, so the tail holds every component in proportion."""
    windows = np.asarray(windows)
    if windows.ndim != 2:
        raise DataSourceError(f"split_validation: windows must be [n, seqlen], got shape {windows.shape}")
    if not 0.0 <= fraction < 1.0:
        raise DataSourceError(f"split_validation: fraction must be in [0, 1), got {fraction}")
    n = windows.shape[0]
    n_val = 0 if fraction == 0 else max(1, int(round(fraction * n)))
    if n - n_val < 1:
        raise DataSourceError(f"split_validation: fraction {fraction} of {n} windows leaves no calibration windows")
    return windows[: n - n_val], windows[n - n_val :]
