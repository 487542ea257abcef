"""Reading sources: local files (.txt, .jsonl, .parquet, globs, offline assets) and the hub / TFDS corpora,
resolved into a text stream or a document list with a cache key. Recipes: see ``optima_jax.data``."""

from __future__ import annotations

import glob as _glob
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from optima_jax import assets
from optima_jax.data.sources import HUB_SOURCES, LOCAL_EXTENSIONS, DataSourceError, SourceSpec
from optima_jax.errors import require_extra

C4_TRAIN_FILE = "en/c4-train.00000-of-01024.json.gz"
C4_VALIDATION_FILE = "en/c4-validation.00000-of-00008.json.gz"
C4_EVAL_DOCS = 1100
C4_TFDS_POOL = 356317


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
class TextStream:
    text: str
    key: tuple | None  # cache key (None = do not cache)
    name: str


@dataclass
class Documents:
    docs: Sequence  # len() and [i] -> str
    key: tuple | None
    name: str
    local: bool


def _file_id(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def local_files(spec: SourceSpec) -> list[str]:
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
        return [str(assets.asset_path(spec.target))]
    if not os.path.exists(spec.target):
        raise DataSourceError(f"source '{spec.text}': file not found: {spec.target}")
    return [spec.target]


def resolve(spec: SourceSpec, *, purpose: str, split: str | None, text_field: str):
    """A TextStream or Documents for one component. purpose: "calib" or "eval"."""
    if spec.kind == "hub":
        return _resolve_hub(spec, purpose=purpose, split=split)
    if split is not None:
        raise DataSourceError(
            f"source '{spec.text}': split={split!r} applies only to {', '.join(HUB_SOURCES)}; "
            "use a [a:b] slice for local files"
        )
    files = local_files(spec)
    ids = tuple(_file_id(p) for p in files)
    if Path(files[0]).suffix.lower() == ".txt":
        text = "\n\n".join(_read_text(p, spec.text) for p in files)
        return TextStream(_slice_text(text, spec.lo, spec.hi), ("stream", ids, spec.lo, spec.hi), spec.text)
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
        return TextStream("\n\n".join(docs), docs_key + ("joined",), spec.text)
    return Documents(docs, docs_key, spec.text, local=True)


class _HFColumn:
    """Lazy `docs[i] -> str` view of a datasets.Dataset column."""

    def __init__(self, ds, field: str):
        self.ds, self.field = ds, field

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[int(i)][self.field]


HUB_CACHE: OrderedDict = OrderedDict()


def _load_dataset(*args, where: str, **kwargs):
    key = (args, tuple(sorted(kwargs.items(), key=lambda kv: kv[0])).__repr__())
    if key in HUB_CACHE:
        return HUB_CACHE[key]
    try:
        from datasets import load_dataset  # noqa: PLC0415
    except ImportError as exc:
        raise DataSourceError(f"source '{where}' needs the `datasets` package: pip install datasets") from exc
    try:
        ds = load_dataset(*args, **kwargs)
    except Exception as exc:  # network / hub errors come in many types
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataSourceError(f"source '{where}': could not load {args[0]} through datasets: {msg}") from exc
    HUB_CACHE[key] = ds
    while len(HUB_CACHE) > 4:
        HUB_CACHE.popitem(last=False)
    return ds


def _resolve_hub(spec: SourceSpec, *, purpose: str, split: str | None):
    name = spec.target
    if name == "wikitext2":
        split = split or ("train" if purpose == "calib" else "test")
        ds = _load_dataset("wikitext", "wikitext-2-raw-v1", split=split, where=spec.text)
        joiner = " " if purpose == "calib" else "\n\n"
        text = joiner.join(ds["text"])
        return TextStream(
            _slice_text(text, spec.lo, spec.hi), ("wikitext2", split, purpose, spec.lo, spec.hi), spec.text
        )
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
            return Documents(docs, None, spec.text, local=False)
        split = split or "validation"
        data_file = C4_VALIDATION_FILE if split == "validation" else C4_TRAIN_FILE
        ds = _load_dataset("allenai/c4", data_files={split: data_file}, split=split, where=spec.text)
        text = " ".join(ds.select(range(min(C4_EVAL_DOCS, len(ds))))["text"])
        return TextStream(_slice_text(text, spec.lo, spec.hi), ("c4-eval", split, spec.lo, spec.hi), spec.text)
    if name == "c4-tfds":
        docs = _tfds_c4_docs(
            split or ("train" if purpose == "calib" else "validation"),
            spec.text,
            C4_TFDS_POOL if purpose == "calib" else C4_EVAL_DOCS,
        )
        docs = _slice_docs(docs, spec.lo, spec.hi)
        if purpose == "calib":
            return Documents(docs, None, spec.text, local=False)
        return TextStream(" ".join(docs), None, spec.text)
    raise DataSourceError(f"source '{spec.text}': unknown hub source {name}")  # unreachable by parsing


def _tfds_c4_docs(split: str, where: str, limit: int) -> list[str]:
    tfds = require_extra("tensorflow_datasets", "tfds", f"source '{where}'")
    key = ("c4-tfds", split, limit)
    if key in HUB_CACHE:
        return HUB_CACHE[key]
    try:
        ds = tfds.load("c4/en", split=f"{split}[:{limit}]", shuffle_files=False, try_gcs=True)
        docs = [ex["text"].decode("utf-8") for ex in tfds.as_numpy(ds)]
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataSourceError(f"source '{where}': could not load c4/en through tensorflow-datasets: {msg}") from exc
    HUB_CACHE[key] = docs
    return docs
