"""Tokenizing text streams and documents (no special tokens), with an in-memory cache and an on-disk token
cache for large texts (``${OPTIMA_JAX_CACHE:-~/.cache/optima_jax}/tokens``)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from optima_jax.data.readers import HUB_CACHE
from optima_jax.data.sources import DataSourceError
from optima_jax.fileio import atomic_write, cache_dir

log = logging.getLogger(__name__)

CHUNK_CHARS = 1 << 20


_TOKEN_CACHE: OrderedDict = OrderedDict()
_TOKEN_CACHE_MAX = 8


def _tokenizer_key(tokenizer) -> tuple:
    name = getattr(tokenizer, "name_or_path", "") or f"id:{id(tokenizer)}"
    try:
        size = len(tokenizer)
    except TypeError:
        size = -1
    return (name, size)


def _cache_get(key):
    if key is None or key not in _TOKEN_CACHE:
        return None
    _TOKEN_CACHE.move_to_end(key)
    return _TOKEN_CACHE[key]


def _cache_put(key, value):
    if key is None:
        return
    _TOKEN_CACHE[key] = value
    while len(_TOKEN_CACHE) > _TOKEN_CACHE_MAX:
        _TOKEN_CACHE.popitem(last=False)


def clear_cache() -> None:
    """Drop the in-memory tokenization and dataset caches."""
    _TOKEN_CACHE.clear()
    HUB_CACHE.clear()


def chunk_text(text: str, target: int = CHUNK_CHARS) -> list[str]:
    """Split text into pieces of about `target` characters, each cut placed at the start of a run of
    >= 2 newlines (a blank line), so byte-level BPE tokenizes the pieces exactly as the whole text.
    A text without blank lines near a cut stays in one piece."""
    pieces, start = [], 0
    blank = re.compile(r"(?<=\S)\n\s*\n")
    while len(text) - start > target:
        m = blank.search(text, start + target)
        if m is None:
            break
        pieces.append(text[start : m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    out = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return out["input_ids"]


def tokenize_stream(
    text: str, tokenizer, *, desc: str = "tokenizing", key=None, chunk_chars: int = CHUNK_CHARS
) -> np.ndarray:
    """int32 [N]: text tokenized without special tokens, in ~chunk_chars pieces (progress bar), cached by key."""
    full_key = None if key is None else ("tok-stream", key, _tokenizer_key(tokenizer))
    hit = _cache_get(full_key)
    if hit is not None:
        return hit
    disk = _disk_cache_path(text, tokenizer) if len(text) >= DISK_CACHE_MIN_CHARS else None
    if disk is not None and disk.exists():
        try:
            tokens = np.load(disk)
            _cache_put(full_key, tokens)
            return tokens
        except (OSError, ValueError):
            pass  # unreadable cache entry: tokenize again and rewrite it
    pieces = chunk_text(text, chunk_chars)
    ids: list[np.ndarray] = []
    batch = 4
    with tqdm(total=len(text), desc=desc, unit="char", unit_scale=True, disable=len(pieces) < 2, leave=False) as bar:
        for b in range(0, len(pieces), batch):
            group = pieces[b : b + batch]
            for seq in encode_batch(tokenizer, group):
                ids.append(np.asarray(seq, dtype=np.int64))
            bar.update(sum(len(p) for p in group))
    tokens = np.concatenate(ids) if ids else np.zeros((0,), np.int64)
    tokens = to_int32(tokens, desc)
    _cache_put(full_key, tokens)
    if disk is not None:
        _save_atomic(disk, tokens)
    return tokens


DISK_CACHE_MIN_CHARS = 1 << 20


def _tokenizer_fingerprint(tokenizer) -> str:
    """Content hash of a fast tokenizer (its full JSON), so a cache entry never outlives a tokenizer change."""
    fp = getattr(tokenizer, "_optima_fingerprint", None)
    if fp is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        blob = backend.to_str() if backend is not None else repr(_tokenizer_key(tokenizer))
        fp = hashlib.sha256(blob.encode()).hexdigest()[:20]
        try:
            tokenizer._optima_fingerprint = fp
        except AttributeError:
            pass
    return fp


def _disk_cache_path(text: str, tokenizer) -> Path | None:
    """Where the token ids of a large text are cached: ${OPTIMA_JAX_CACHE:-~/.cache/optima_jax}/tokens/."""
    if os.environ.get("OPTIMA_JAX_NO_TOKEN_CACHE"):
        return None
    root = cache_dir("tokens")
    h = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return root / f"{h}-{_tokenizer_fingerprint(tokenizer)}.npy"


def _save_atomic(path: Path, tokens: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: np.save(f, tokens), binary=True)
    except OSError as exc:  # a read-only or full cache is not an error, just slower next time
        log.warning("could not write the token cache %s: %s", path, exc)


def to_int32(tokens: np.ndarray, where: str) -> np.ndarray:
    if tokens.size and (tokens.max() >= 2**31 or tokens.min() < 0):
        raise DataSourceError(f"source '{where}': token ids outside the int32 range")
    return tokens.astype(np.int32)


def tokenize_documents(docs: Sequence[str], tokenizer, *, desc: str = "tokenizing", key=None) -> list[np.ndarray]:
    """[int32 [n_i]] per document, without special tokens, cached by key."""
    full_key = None if key is None else ("tok-docs", key, _tokenizer_key(tokenizer))
    hit = _cache_get(full_key)
    if hit is not None:
        return hit
    out: list[np.ndarray] = []
    batch = 256
    for b in tqdm(range(0, len(docs), batch), desc=desc, disable=len(docs) <= batch, leave=False):
        for seq in encode_batch(tokenizer, list(docs[b : b + batch])):
            out.append(to_int32(np.asarray(seq, dtype=np.int64), desc))
    _cache_put(full_key, out)
    return out
