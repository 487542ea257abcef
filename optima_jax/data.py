"""Calibration and evaluation token data (host-side NumPy).

```python
windows = calibration_windows(source, tokenizer, nsamples=128, seqlen=2048, seed=0, add_bos=False)  # int32 [n, L]
tokens  = eval_tokens(source, tokenizer, add_bos=False)                                            # int32 [N]
calib, val = split_validation(windows, 0.1)
```

Source syntax (a string, or a list of component strings / (component, weight) pairs):

- `c4`: allenai/c4 shard `en/c4-train.00000-of-01024.json.gz` via `datasets` (the SparseGPT/Wanda recipe).
  For `eval_tokens`: `" ".join` of the first 1100 documents of `en/c4-validation.00000-of-00008.json.gz`
  (the reference then keeps the first 256*seqlen tokens; cut the result yourself).
- `c4-tfds`: C4 (`c4/en`) through tensorflow-datasets (extra `pip install 'optima_jax[tfds]'`); the document
  pool is the first 356317 training documents (the size of the json shard), same recipe as `c4`.
- `wikitext2`: wikitext-2-raw-v1 via `datasets`; calibration uses the train split joined with " ",
  `eval_tokens` the test split joined with "\\n\\n" (reference recipe). `split=` overrides the split.
- a local file: `.txt` (one token stream), `.jsonl` (one document per line, field `text_field`,
  default "text"), `.parquet` (one document per row, column `text_field`).
- a glob (`data/*.txt`): the sorted matches, all of one kind; `.txt` files are joined with "\\n\\n" into one
  stream, `.jsonl`/`.parquet` records are concatenated into one document list.
- `asset:<name>`: an offline text asset (`sotu`, `wiki_train`, `wiki_test`, see optima_jax.assets).
- A fraction slice suffix `[a:b]` (0 <= a < b <= 1, either may be omitted) keeps part of a source:
  for text streams the characters from fraction a to fraction b, each cut moved forward to just after the
  next newline (so `x.txt[:0.9]` and `x.txt[0.9:]` are disjoint and together give the whole text);
  for document sources the records from index round(a*n) to round(b*n).
- A weight suffix `:w` (a number) on a component, and `+` between components, make a mixture:
  `"asset:sotu:0.7+asset:wiki_train[:0.9]:0.3"` or `["asset:sotu", ("data/*.jsonl", 2)]`.
  Weights are normalised (components without a weight share what is left, or weigh 1 each when none has
  one); component k gets its share of nsamples by the largest-remainder rule (round(w*nsamples) whenever
  those sum to nsamples). Component 0 samples with `seed`, component k>0 with a seed derived from
  (seed, k). Windows are interleaved deterministically and evenly (component k's j-th window sits at
  position (j+0.5)/count_k), so `split_validation` takes a proportional share of every component.

Sampling recipes (python `random.Random(seed)`, the same draws as the reference's `random.seed(seed)`):
- streams (`.txt`, `wikitext2`, assets): `i = randint(0, N - L - 1)`, window = tokens[i:i+L].
- documents (`c4`, `.jsonl`, `.parquet`): repeat `d = randint(0, D - 1)` until document d has more than L
  tokens, then `i = randint(0, len(d) - L - 1)`. Local document lists with no document longer than L fall
  back to their "\\n\\n"-joined stream (logged).
Here L = seqlen, or seqlen - 1 with `add_bos=True`, whose windows are [BOS] + L tokens. So with
add_bos=False the windows equal the reference's for a tokenizer that adds no BOS (GPT-2, Qwen), and with
add_bos=True the random draws (documents, offsets) equal the reference's for a BOS-adding tokenizer
(LLaMA, Gemma), whose windows differ from ours only in their first token (theirs: BOS only when the
offset is 0; ours: always BOS). A stream must hold at least nsamples * L + 1 tokens (stricter than the
reference's L + 1, so that a tiny corpus is not silently resampled); the error says how many it has. Text is always
tokenized with add_special_tokens=False (documents one by one; long streams in ~1 MiB pieces cut just
before a blank line), so no special token appears inside a window. Tokenized streams are cached in memory
per (files, sizes, mtimes, slice, tokenizer).
"""

from __future__ import annotations

import glob as _glob
import hashlib
import json
import logging
import math
import os
import random
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optima_jax.errors import OptimaError, require_extra
from optima_jax.fileio import atomic_write

log = logging.getLogger(__name__)

HUB_SOURCES = ("c4", "c4-tfds", "wikitext2")
LOCAL_EXTENSIONS = (".txt", ".jsonl", ".parquet")
C4_TRAIN_FILE = "en/c4-train.00000-of-01024.json.gz"
C4_VALIDATION_FILE = "en/c4-validation.00000-of-00008.json.gz"
C4_EVAL_DOCS = 1100
C4_TFDS_POOL = 356317
MAX_DOC_TRIES = 100_000  # consecutive rejections before the document recipe gives up
CHUNK_CHARS = 1 << 20


class DataSourceError(OptimaError):
    """A calibration / evaluation source is malformed, missing, unreadable or too small."""


# ----------------------------------------------------------------------------------------------
# parsing the source syntax


@dataclass(frozen=True)
class SourceSpec:
    """One component of a source: kind in {"hub", "file", "glob", "asset"}, target (name/path/pattern),
    slice fractions [lo, hi), weight (None = unspecified), text (as written, for messages)."""

    kind: str
    target: str
    lo: float = 0.0
    hi: float = 1.0
    weight: float | None = None
    text: str = ""


_SLICE = re.compile(r"^(?P<base>.*)\[(?P<lo>[^\[\]:]*):(?P<hi>[^\[\]:]*)\]$")
_FLOAT = re.compile(r"^(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$")


def _parse_fraction(s: str, default: float, where: str) -> float:
    s = s.strip()
    if not s:
        return default
    try:
        v = float(s)
    except ValueError:
        raise DataSourceError(f"source '{where}': slice bound '{s}' is not a number in [0, 1]") from None
    if not 0.0 <= v <= 1.0:
        raise DataSourceError(f"source '{where}': slice bound {v} is outside [0, 1]")
    return v


def _parse_component(text: str, weight: float | None = None) -> SourceSpec:
    orig = text
    text = text.strip()
    if not text:
        raise DataSourceError(f"source '{orig}': empty source component")
    head, sep, tail = text.rpartition(":")
    if sep and head and _FLOAT.match(tail.strip()):
        if weight is not None:
            raise DataSourceError(f"source '{orig}': weight given twice")
        text, weight = head, float(tail)
    if weight is not None and (not math.isfinite(weight) or weight < 0):
        raise DataSourceError(f"source '{orig}': weight {weight} must be a finite number >= 0")
    lo, hi = 0.0, 1.0
    m = _SLICE.match(text)
    if m:
        text = m.group("base")
        lo, hi = _parse_fraction(m.group("lo"), 0.0, orig), _parse_fraction(m.group("hi"), 1.0, orig)
        if not lo < hi:
            raise DataSourceError(f"source '{orig}': empty slice [{lo}:{hi}] (need start < end)")
    if text in HUB_SOURCES:
        return SourceSpec("hub", text, lo, hi, weight, orig)
    if text.startswith("asset:"):
        return SourceSpec("asset", text[len("asset:") :], lo, hi, weight, orig)
    if any(ch in text for ch in "*?[") and not os.path.exists(text):
        return SourceSpec("glob", text, lo, hi, weight, orig)
    scheme = _SCHEME.match(text)
    if scheme and len(scheme.group(1)) > 1 and not os.path.exists(text):
        raise DataSourceError(
            f"source '{orig}': unknown source scheme '{scheme.group(1)}:' "
            f"(known: {', '.join(HUB_SOURCES)}, asset:<name>, local .txt/.jsonl/.parquet paths)"
        )
    suffix = Path(text).suffix.lower()
    if suffix not in LOCAL_EXTENSIONS:
        if not os.path.exists(text) and not suffix:
            raise DataSourceError(
                f"source '{orig}': unknown source (not {', '.join(HUB_SOURCES)}, asset:<name>, or an existing file)"
            )
        raise DataSourceError(
            f"source '{orig}': unsupported file type '{suffix or '(none)'}' at {text} "
            f"(supported: {', '.join(LOCAL_EXTENSIONS)})"
        )
    return SourceSpec("file", text, lo, hi, weight, orig)


def parse_source(source) -> list[SourceSpec]:
    """Parse a source string / list into its components (see the module docstring)."""
    if isinstance(source, (str, os.PathLike)):
        s = os.fspath(source)
        parts = [s] if os.path.exists(s) else s.split("+")
        comps = [_parse_component(p) for p in parts]
    elif isinstance(source, Sequence) and not isinstance(source, (bytes, bytearray)):
        comps = []
        for item in source:
            if isinstance(item, (str, os.PathLike)):
                comps.append(_parse_component(os.fspath(item)))
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                comps.append(_parse_component(os.fspath(item[0]), float(item[1])))
            else:
                raise DataSourceError(f"source {source!r}: component {item!r} is not a string or (string, weight)")
    else:
        raise DataSourceError(f"source {source!r}: expected a string or a list of strings / (string, weight) pairs")
    if not comps:
        raise DataSourceError(f"source {source!r}: no components")
    return comps


def mixture_counts(weights: Sequence[float | None], nsamples: int) -> list[int]:
    """Samples per component: weights normalised (None shares the rest, or 1 each if all None), then
    the largest-remainder rule so the counts sum to nsamples (ties go to the earlier component)."""
    given = [w for w in weights if w is not None]
    if not given:
        w = [1.0] * len(weights)
    else:
        rest = max(0.0, 1.0 - sum(given)) if sum(given) < 1.0 else 0.0
        n_none = sum(w is None for w in weights)
        w = [x if x is not None else rest / n_none for x in weights]
    total = sum(w)
    if total <= 0:
        raise DataSourceError(f"mixture weights {list(weights)} sum to zero")
    exact = [x / total * nsamples for x in w]
    counts = [math.floor(e) for e in exact]
    order = sorted(range(len(w)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: nsamples - sum(counts)]:
        counts[k] += 1
    return counts


def interleave_order(counts: Sequence[int]) -> list[tuple[int, int]]:
    """(component, j) pairs in output order: component k's j-th item at key (j + 0.5) / count_k."""
    items = [((j + 0.5) / c, k, j) for k, c in enumerate(counts) for j in range(c)]
    items.sort()
    return [(k, j) for _, k, j in items]


def component_seed(seed: int, k: int) -> int:
    """Seed of mixture component k: `seed` itself for k == 0, else derived from (seed, k)."""
    if k == 0:
        return seed
    return int(np.random.SeedSequence([seed, k]).generate_state(1, dtype=np.uint64)[0] >> 1)


# ----------------------------------------------------------------------------------------------
# reading text


def _read_text(path: str, where: str) -> str:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataSourceError(f"source '{where}': file not found: {path}") from None
    except IsADirectoryError:
        raise DataSourceError(f"source '{where}': {path} is a directory, not a file") from None
    except OSError as exc:
        raise DataSourceError(f"source '{where}': cannot read {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataSourceError(
            f"source '{where}': {path} is not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} "
            f"at byte offset {exc.start})"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise DataSourceError(f"source '{where}': {path} is empty")
    return text


def _read_jsonl(path: str, field: str, where: str) -> list[str]:
    text = _read_text(path, where)
    docs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataSourceError(f"source '{where}': {path} line {lineno} is not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict) or field not in rec:
            raise DataSourceError(f"source '{where}': {path} line {lineno} has no field '{field}'")
        if not isinstance(rec[field], str):
            raise DataSourceError(f"source '{where}': {path} line {lineno} field '{field}' is not a string")
        docs.append(rec[field])
    return docs


def _read_parquet(path: str, field: str, where: str) -> list[str]:
    import pyarrow.parquet as pq  # noqa: PLC0415

    if not os.path.isfile(path):
        raise DataSourceError(f"source '{where}': file not found: {path}")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for damaged files
        raise DataSourceError(f"source '{where}': cannot read parquet {path}: {str(exc).splitlines()[0]}") from None
    if field not in table.column_names:
        raise DataSourceError(f"source '{where}': {path} has no column '{field}' (columns: {table.column_names})")
    docs = table.column(field).to_pylist()
    bad = next((i for i, d in enumerate(docs) if not isinstance(d, str)), None)
    if bad is not None:
        raise DataSourceError(f"source '{where}': {path} row {bad} column '{field}' is not a string")
    if not any(d.strip() for d in docs):
        raise DataSourceError(f"source '{where}': {path} is empty")
    return docs


def _slice_text(text: str, lo: float, hi: float) -> str:
    def cut(f: float) -> int:
        if f <= 0.0:
            return 0
        if f >= 1.0:
            return len(text)
        pos = int(f * len(text))
        nl = text.find("\n", pos)
        return len(text) if nl < 0 else nl + 1

    return text[cut(lo) : cut(hi)]


def _slice_docs(docs: list, lo: float, hi: float) -> list:
    n = len(docs)
    return docs[int(round(lo * n)) : int(round(hi * n))]


# ----------------------------------------------------------------------------------------------
# resolved sources


@dataclass
class _Stream:
    text: str
    key: tuple | None  # cache key (None = do not cache)
    name: str


@dataclass
class _Documents:
    docs: Sequence  # len() and [i] -> str
    key: tuple | None
    name: str
    local: bool


def _file_id(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def _local_files(spec: SourceSpec) -> list[str]:
    if spec.kind == "glob":
        files = sorted(p for p in _glob.glob(spec.target, recursive=True) if os.path.isfile(p))
        if not files:
            raise DataSourceError(f"source '{spec.text}': no files match the glob {spec.target}")
        kinds = {Path(p).suffix.lower() for p in files}
        bad = kinds - set(LOCAL_EXTENSIONS)
        if bad:
            raise DataSourceError(
                f"source '{spec.text}': glob {spec.target} matches unsupported file types "
                f"{sorted(bad)} (supported: {', '.join(LOCAL_EXTENSIONS)})"
            )
        if ".txt" in kinds and len(kinds) > 1:
            raise DataSourceError(
                f"source '{spec.text}': glob {spec.target} mixes .txt streams with "
                "document files; use a mixture (a+b) instead"
            )
        return files
    if spec.kind == "asset":
        from optima_jax import assets  # noqa: PLC0415

        return [str(assets.asset_path(spec.target))]
    if not os.path.exists(spec.target):
        raise DataSourceError(f"source '{spec.text}': file not found: {spec.target}")
    return [spec.target]


def _resolve(spec: SourceSpec, *, purpose: str, split: str | None, text_field: str):
    """A _Stream or _Documents for one component. purpose: "calib" or "eval"."""
    if spec.kind == "hub":
        return _resolve_hub(spec, purpose=purpose, split=split)
    if split is not None:
        raise DataSourceError(
            f"source '{spec.text}': split={split!r} applies only to {', '.join(HUB_SOURCES)}; "
            "use a [a:b] slice for local files"
        )
    files = _local_files(spec)
    ids = tuple(_file_id(p) for p in files)
    if Path(files[0]).suffix.lower() == ".txt":
        text = "\n\n".join(_read_text(p, spec.text) for p in files)
        return _Stream(_slice_text(text, spec.lo, spec.hi), ("stream", ids, spec.lo, spec.hi), spec.text)
    docs = []
    for p in files:
        if Path(p).suffix.lower() == ".jsonl":
            docs.extend(_read_jsonl(p, text_field, spec.text))
        else:
            docs.extend(_read_parquet(p, text_field, spec.text))
    if not docs:
        raise DataSourceError(f"source '{spec.text}': no documents in {', '.join(files)}")
    docs = _slice_docs(docs, spec.lo, spec.hi)
    if not docs:
        raise DataSourceError(f"source '{spec.text}': the slice [{spec.lo}:{spec.hi}] keeps no documents")
    docs_key = ("docs", ids, text_field, spec.lo, spec.hi)
    if purpose == "eval":
        return _Stream("\n\n".join(docs), docs_key + ("joined",), spec.text)
    return _Documents(docs, docs_key, spec.text, local=True)


class _HFColumn:
    """Lazy `docs[i] -> str` view of a datasets.Dataset column."""

    def __init__(self, ds, field: str):
        self.ds, self.field = ds, field

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[int(i)][self.field]


_HUB_CACHE: OrderedDict = OrderedDict()


def _load_dataset(*args, where: str, **kwargs):
    key = (args, tuple(sorted(kwargs.items(), key=lambda kv: kv[0])).__repr__())
    if key in _HUB_CACHE:
        return _HUB_CACHE[key]
    try:
        from datasets import load_dataset  # noqa: PLC0415
    except ImportError as exc:
        raise DataSourceError(f"source '{where}' needs the `datasets` package: pip install datasets") from exc
    try:
        ds = load_dataset(*args, **kwargs)
    except Exception as exc:  # network / hub errors come in many types
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataSourceError(f"source '{where}': could not load {args[0]} through datasets: {msg}") from exc
    _HUB_CACHE[key] = ds
    while len(_HUB_CACHE) > 4:
        _HUB_CACHE.popitem(last=False)
    return ds


def _resolve_hub(spec: SourceSpec, *, purpose: str, split: str | None):
    name = spec.target
    if name == "wikitext2":
        split = split or ("train" if purpose == "calib" else "test")
        ds = _load_dataset("wikitext", "wikitext-2-raw-v1", split=split, where=spec.text)
        joiner = " " if purpose == "calib" else "\n\n"
        text = joiner.join(ds["text"])
        return _Stream(_slice_text(text, spec.lo, spec.hi), ("wikitext2", split, purpose, spec.lo, spec.hi), spec.text)
    if name == "c4":
        if purpose == "calib":
            split = split or "train"
            data_file = C4_TRAIN_FILE if split == "train" else C4_VALIDATION_FILE
            ds = _load_dataset("allenai/c4", data_files={split: data_file}, split=split, where=spec.text)
            docs = _HFColumn(ds, "text")
            if (spec.lo, spec.hi) != (0.0, 1.0):
                n = len(docs)
                ds = ds.select(range(int(round(spec.lo * n)), int(round(spec.hi * n))))
                docs = _HFColumn(ds, "text")
            return _Documents(docs, None, spec.text, local=False)
        split = split or "validation"
        data_file = C4_VALIDATION_FILE if split == "validation" else C4_TRAIN_FILE
        ds = _load_dataset("allenai/c4", data_files={split: data_file}, split=split, where=spec.text)
        text = " ".join(ds.select(range(min(C4_EVAL_DOCS, len(ds))))["text"])
        return _Stream(_slice_text(text, spec.lo, spec.hi), ("c4-eval", split, spec.lo, spec.hi), spec.text)
    if name == "c4-tfds":
        docs = _tfds_c4_docs(
            split or ("train" if purpose == "calib" else "validation"),
            spec.text,
            C4_TFDS_POOL if purpose == "calib" else C4_EVAL_DOCS,
        )
        docs = _slice_docs(docs, spec.lo, spec.hi)
        if purpose == "calib":
            return _Documents(docs, None, spec.text, local=False)
        return _Stream(" ".join(docs), None, spec.text)
    raise DataSourceError(f"source '{spec.text}': unknown hub source {name}")  # unreachable by parsing


def _tfds_c4_docs(split: str, where: str, limit: int) -> list[str]:
    tfds = require_extra("tensorflow_datasets", "tfds", f"source '{where}'")
    key = ("c4-tfds", split, limit)
    if key in _HUB_CACHE:
        return _HUB_CACHE[key]
    try:
        ds = tfds.load("c4/en", split=f"{split}[:{limit}]", shuffle_files=False, try_gcs=True)
        docs = [ex["text"].decode("utf-8") for ex in tfds.as_numpy(ds)]
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataSourceError(f"source '{where}': could not load c4/en through tensorflow-datasets: {msg}") from exc
    _HUB_CACHE[key] = docs
    return docs


# ----------------------------------------------------------------------------------------------
# tokenization


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
    _HUB_CACHE.clear()


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


def _encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
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
    from tqdm.auto import tqdm  # noqa: PLC0415

    pieces = chunk_text(text, chunk_chars)
    ids: list[np.ndarray] = []
    batch = 4
    with tqdm(total=len(text), desc=desc, unit="char", unit_scale=True, disable=len(pieces) < 2, leave=False) as bar:
        for b in range(0, len(pieces), batch):
            group = pieces[b : b + batch]
            for seq in _encode_batch(tokenizer, group):
                ids.append(np.asarray(seq, dtype=np.int64))
            bar.update(sum(len(p) for p in group))
    tokens = np.concatenate(ids) if ids else np.zeros((0,), np.int64)
    tokens = _to_int32(tokens, desc)
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
    root = Path(os.environ.get("OPTIMA_JAX_CACHE", Path.home() / ".cache" / "optima_jax")) / "tokens"
    h = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return root / f"{h}-{_tokenizer_fingerprint(tokenizer)}.npy"


def _save_atomic(path: Path, tokens: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: np.save(f, tokens), binary=True)
    except OSError as exc:  # a read-only or full cache is not an error, just slower next time
        log.warning("could not write the token cache %s: %s", path, exc)


def _to_int32(tokens: np.ndarray, where: str) -> np.ndarray:
    if tokens.size and (tokens.max() >= 2**31 or tokens.min() < 0):
        raise DataSourceError(f"source '{where}': token ids outside the int32 range")
    return tokens.astype(np.int32)


def tokenize_documents(docs: Sequence[str], tokenizer, *, desc: str = "tokenizing", key=None) -> list[np.ndarray]:
    """[int32 [n_i]] per document, without special tokens, cached by key."""
    full_key = None if key is None else ("tok-docs", key, _tokenizer_key(tokenizer))
    hit = _cache_get(full_key)
    if hit is not None:
        return hit
    from tqdm.auto import tqdm  # noqa: PLC0415

    out: list[np.ndarray] = []
    batch = 256
    for b in tqdm(range(0, len(docs), batch), desc=desc, disable=len(docs) <= batch, leave=False):
        for seq in _encode_batch(tokenizer, list(docs[b : b + batch])):
            out.append(_to_int32(np.asarray(seq, dtype=np.int64), desc))
    _cache_put(full_key, out)
    return out


# ----------------------------------------------------------------------------------------------
# the sampling recipes (pure; python `random.Random` draws exactly as the reference's global `random`)


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
    src = _resolve(spec, purpose="calib", split=split, text_field=text_field)
    rng = random.Random(seed)
    if isinstance(src, _Documents):
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
            src = _Stream("\n\n".join(src.docs), src.key + ("joined",), src.name)
        else:
            memo: dict[int, np.ndarray] = {}

            def get(d: int) -> np.ndarray:
                if d not in memo:
                    memo[d] = _to_int32(np.asarray(_encode_batch(tokenizer, [src.docs[d]])[0], np.int64), src.name)
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
    src = _resolve(spec, purpose="eval", split=split, text_field=text_field)
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
