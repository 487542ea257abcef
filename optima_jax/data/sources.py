"""Source syntax: parsing a source string into components (kind, target, slice, weight), mixture counts and
the deterministic interleaving of mixture windows. Pure; reads no files. Syntax: see ``optima_jax.data``."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optima_jax.errors import OptimaError

HUB_SOURCES = ("c4", "c4-tfds", "wikitext2")
LOCAL_EXTENSIONS = (".txt", ".jsonl", ".parquet")


class DataSourceError(OptimaError):
    """A calibration / evaluation source is malformed, missing, unreadable or too small."""


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
