"""GGUF loading against independent references: the original HF tensors written through gguf.GGUFWriter the way
llama.cpp's convert script does, and transformers' own GGUF loader (tiny files fast, the two real models slow)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from optima_jax.models.loading.gguf import GGUFError, load_gguf  # noqa: E402


def _llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (written from its description)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _q8_0_roundtrip64(w: np.ndarray) -> np.ndarray:
    """float64 reference of GGML Q8_0 (blocks of 32 along rows: d = max|x|/127, q = round(x/d), value = f16(d)*q)."""
    x = w.astype(np.float64).reshape(-1, 32)
    d = np.abs(x).max(axis=1, keepdims=True) / 127.0
    q = np.round(np.divide(x, d, out=np.zeros_like(x), where=d > 0))
    return (d.astype(np.float16).astype(np.float64) * q).reshape(w.shape)


def _tiny_vocab(kind: str):
    """A tiny but complete tokenizer vocabulary as llama.cpp writes it: byte-level BPE ('gpt2', every byte a
    token plus a few merges) or sentencepiece ('llama': <unk>/<s>/</s>, byte-fallback tokens, scored pieces)."""
    if kind == "gpt2":
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        base = list(bytes_to_unicode().values())
        merged = ["Ġt", "he", "Ġthe", "in", "Ġin"]
        tokens = base + merged + ["<|endoftext|>"]
        types = [1] * (len(tokens) - 1) + [3]
        merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ in"]
        return dict(
            model="gpt2",
            pre="smollm",
            tokens=tokens,
            types=types,
            merges=merges,
            scores=None,
            bos=len(tokens) - 1,
            eos=len(tokens) - 1,
            unk=None,
            add_bos=False,
        )
    pieces = ["▁", "t", "h", "e", "i", "n", "▁t", "he", "▁the", "in", "▁in"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(pieces))]
    return dict(
        model="llama",
        pre="default",
        tokens=tokens,
        types=types,
        merges=None,
        scores=scores,
        bos=1,
        eos=2,
        unk=0,
        add_bos=True,
    )


def _add_vocab(w, vocab: dict) -> None:
    """Write a _tiny_vocab's tokenizer.* fields with a gguf.GGUFWriter."""
    w.add_tokenizer_model(vocab["model"])
    w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    if vocab["merges"]:
        w.add_token_merges(vocab["merges"])
    if vocab["scores"]:
        w.add_token_scores(vocab["scores"])
    w.add_bos_token_id(vocab["bos"])
    w.add_eos_token_id(vocab["eos"])
    if vocab["unk"] is not None:
        w.add_unk_token_id(vocab["unk"])
    w.add_add_bos_token(vocab["add_bos"])


def _tiny_llama(tmp_path: Path, tokenizer: str | None = None):
    """A random 2-layer LLaMA written as llama.cpp's converter would; `tokenizer` ('gpt2' / 'llama') also writes
    a _tiny_vocab tokenizer, sizing the embedding to it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = _tiny_vocab(tokenizer) if tokenizer else None
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(vocab["tokens"]) if vocab else 96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=50000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}

    path = tmp_path / "tiny-llama.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    w.add_vocab_size(cfg.vocab_size)
    if vocab:
        _add_vocab(w, vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    q8 = {}

    def add(name, arr, quant):
        if quant:
            data = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            q8[name] = True
        else:
            w.add_tensor(name, arr.astype(np.float32))

    add("token_embd.weight", sd["model.embed_tokens.weight"], True)
    add("output_norm.weight", sd["model.norm.weight"], False)
    add("output.weight", sd["lm_head.weight"], False)
    names = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    for i in range(2):
        for g, h in names.items():
            arr = sd[f"model.layers.{i}.{h}.weight"]
            if g == "attn_q":
                arr = _llamacpp_permute(arr, 4)
            elif g == "attn_k":
                arr = _llamacpp_permute(arr, 2)
            add(f"blk.{i}.{g}.weight", arr, quant=(i == 0 and "norm" not in g))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, sd


def test_tiny_llama_gguf_recovers_hf_tensors(tmp_path):
    path, sd = _tiny_llama(tmp_path)
    cfg, params, tok = load_gguf(path, tokenizer=False)
    assert tok is None
    assert set(params) == set(sd)
    for k, ref in sd.items():
        got = params[k]
        assert got.dtype == np.float32 and got.shape == ref.shape, k
        quantized = k == "model.embed_tokens.weight" or (k.startswith("model.layers.0.") and "norm" not in k)
        if quantized:
            np.testing.assert_allclose(got, _q8_0_roundtrip64(ref), rtol=0, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(got, ref, err_msg=k)
    assert cfg["model_type"] == "llama" and cfg["head_dim"] == 16 and cfg["num_key_value_heads"] == 2
    assert cfg["tie_word_embeddings"] is False and cfg["rope_theta"] == 50000.0


def test_tiny_llama_gguf_matches_transformers_loader(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    path, _ = _tiny_llama(tmp_path)
    cfg, params, _ = load_gguf(path, tokenizer=False)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)
    ref = {k: v.numpy() for k, v in hf.state_dict().items()}
    assert set(ref) == set(params)
    for k in ref:
        np.testing.assert_array_equal(params[k], ref[k], err_msg=k)
    hc = AutoConfig.from_pretrained(str(tmp_path), gguf_file=path.name).to_dict()
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "tie_word_embeddings",
    ):
        assert cfg[key] == hc[key], key


TOKENIZER_TEXTS = ["the thin hen in the inn", " in the  thé\n\nthe", "Hello, world! 1,234.5"]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_gguf_tokenizer_without_torch_matches_transformers(tmp_path, kind):
    """The GGUF load path builds its tokenizer with torch unimportable, and the ids, special tokens and BOS rule
    equal transformers' own from_pretrained(gguf_file=...) (which needs torch)."""
    import json
    import subprocess
    import sys

    from transformers import AutoTokenizer

    path, _ = _tiny_llama(tmp_path, tokenizer=kind)
    code = (
        "import json, sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
        "from optima_jax.models.loading.gguf import load_gguf\n"
        f"_, _, tok = load_gguf({str(path)!r}, cache_dir={str(tmp_path / 'cache')!r})\n"
        f"texts = {TOKENIZER_TEXTS!r}\n"
        "print(json.dumps({'ids': [tok(t).input_ids for t in texts], 'bos': tok.bos_token_id,"
        " 'eos': tok.eos_token_id, 'decoded': tok.decode(tok(texts[1]).input_ids, skip_special_tokens=True)}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert got["ids"] == [ref(t).input_ids for t in TOKENIZER_TEXTS]
    assert (got["bos"], got["eos"]) == (ref.bos_token_id, ref.eos_token_id)
    assert got["decoded"] == ref.decode(ref(TOKENIZER_TEXTS[1]).input_ids, skip_special_tokens=True)
    assert len(set(map(len, got["ids"]))) > 1 and max(map(len, got["ids"])) > 5  # real tokenization happened


def test_tiny_gemma3_gguf_norms_and_layer_types(tmp_path):
    """Gemma 3: GGUF norms are 1 + w; layer pattern every 6th global; config keys as transformers builds them."""
    from transformers import AutoConfig

    rng = np.random.default_rng(0)
    n_layers, d, heads, hd, ff, vocab = 7, 64, 2, 32, 96, 80
    path = tmp_path / "tiny-gemma3.gguf"
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_block_count(n_layers)
    w.add_context_length(1024)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(1)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(16)
    w.add_vocab_size(vocab)
    ref = {}

    def add(g, h, shape, norm=False):
        arr = (0.2 * rng.standard_normal(shape)).astype(np.float32)
        ref[h] = arr
        w.add_tensor(g, (arr + 1.0).astype(np.float32) if norm else arr)

    add("token_embd.weight", "model.embed_tokens.weight", (vocab, d))
    add("output_norm.weight", "model.norm.weight", (d,), norm=True)
    for i in range(n_layers):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_q.weight", p + "self_attn.q_proj.weight", (heads * hd, d))
        add(f"blk.{i}.attn_k.weight", p + "self_attn.k_proj.weight", (hd, d))
        add(f"blk.{i}.attn_v.weight", p + "self_attn.v_proj.weight", (hd, d))
        add(f"blk.{i}.attn_output.weight", p + "self_attn.o_proj.weight", (d, heads * hd))
        add(f"blk.{i}.attn_q_norm.weight", p + "self_attn.q_norm.weight", (hd,), norm=True)
        add(f"blk.{i}.attn_k_norm.weight", p + "self_attn.k_norm.weight", (hd,), norm=True)
        add(f"blk.{i}.attn_norm.weight", p + "input_layernorm.weight", (d,), norm=True)
        add(f"blk.{i}.post_attention_norm.weight", p + "post_attention_layernorm.weight", (d,), norm=True)
        add(f"blk.{i}.ffn_norm.weight", p + "pre_feedforward_layernorm.weight", (d,), norm=True)
        add(f"blk.{i}.post_ffw_norm.weight", p + "post_feedforward_layernorm.weight", (d,), norm=True)
        add(f"blk.{i}.ffn_gate.weight", p + "mlp.gate_proj.weight", (ff, d))
        add(f"blk.{i}.ffn_up.weight", p + "mlp.up_proj.weight", (ff, d))
        add(f"blk.{i}.ffn_down.weight", p + "mlp.down_proj.weight", (d, ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    cfg, params, _ = load_gguf(path, tokenizer=False)
    assert set(params) == set(ref)
    for k, v in ref.items():
        np.testing.assert_allclose(params[k], v, rtol=0, atol=1e-6, err_msg=k)
    hc = AutoConfig.from_pretrained(str(tmp_path), gguf_file=path.name).to_dict()
    assert cfg["model_type"] == hc["model_type"] == "gemma3_text"
    for key in (
        "layer_types",
        "sliding_window",
        "head_dim",
        "num_key_value_heads",
        "tie_word_embeddings",
        "hidden_activation",
        "rms_norm_eps",
    ):
        assert cfg[key] == hc[key], key
    # transformers keeps its 256 default; llama.cpp (the GGUF's runtime) scales by 1/sqrt(head_dim) below 27B
    assert cfg["query_pre_attn_scalar"] == hd
    rp = hc.get("rope_parameters") or {}
    if "full_attention" in rp:
        assert cfg["rope_theta"] == rp["full_attention"]["rope_theta"]
        assert cfg["rope_local_base_freq"] == rp["sliding_attention"]["rope_theta"]


def write_stub_gguf(path, arch: str):
    """A GGUF file of architecture ``arch`` holding one embedding tensor (enough to reach the arch check)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_errors(tmp_path):
    with pytest.raises(GGUFError, match="not found"):
        load_gguf(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(GGUFError, match="not a GGUF"):
        load_gguf(bad)
    other = write_stub_gguf(tmp_path / "gpt2.gguf", "gpt2")
    with pytest.raises(GGUFError, match="unsupported GGUF architecture 'gpt2'"):
        load_gguf(other)


def test_unknown_pypi_model():
    from optima_jax.models.loading.pypi_models import PypiModelError, resolve_pypi_model

    with pytest.raises(PypiModelError, match="unknown packaged model"):
        resolve_pypi_model("pypi:not-a-model")


# ------------------------------------------------------------------ real models (slow)
def _real(name):
    from optima_jax.models.loading.pypi_models import PypiModelError, resolve_pypi_model

    try:
        return resolve_pypi_model(name)
    except PypiModelError as e:
        pytest.skip(f"packaged model unavailable: {e}")


@pytest.mark.slow
@pytest.mark.parametrize("source", ["smollm2-135m", "gemma3-270m"])
def test_real_gguf_matches_transformers(source):
    from transformers import AutoModelForCausalLM

    path = _real(source)
    cfg, params, tok = load_gguf(path)
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    ref = hf.state_dict()
    if cfg["tie_word_embeddings"]:
        ref = {k: v for k, v in ref.items() if k != "lm_head.weight"}
    assert set(ref) == set(params)
    for k, v in ref.items():
        np.testing.assert_array_equal(params[k], v.numpy(), err_msg=k)
    hc = hf.config.to_dict()
    for key in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "tie_word_embeddings",
        "layer_types",
        "sliding_window",
        "query_pre_attn_scalar",
    ):
        if key in hc:
            assert cfg[key] == hc[key], key
    text = "The quick brown fox jumps over the lazy dog."
    from transformers import AutoTokenizer

    ref_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert tok(text).input_ids == ref_tok(text).input_ids
    from optima_jax.models.loading.gguf import _load_tokenizer, _open_reader

    cached = _load_tokenizer(path, _open_reader(path), None)  # the tokenizer saved in the cache on first load
    text = Path(os.environ.get("OPTIMA_JAX_DATA_DIR", "/work/shared/data"), "wiki_test.txt")
    text = text.read_text()[:20000] if text.exists() else text_fallback()
    assert cached(text).input_ids == ref_tok(text).input_ids
    assert cached.bos_token_id == ref_tok.bos_token_id and cached.eos_token_id == ref_tok.eos_token_id


def text_fallback():
    return "Tokenizers must agree on punctuation, numbers like 1,234.5 and  double  spaces.\n\nNew paragraph."


def test_truncated_gguf_is_called_truncated(tmp_path):
    path, _ = _tiny_llama(tmp_path)
    data = path.read_bytes()
    for cut in (len(data) // 2, 4096):
        short = tmp_path / f"cut{cut}.gguf"
        short.write_bytes(data[:cut])
        with pytest.raises(GGUFError, match=rf"truncated GGUF file .*cut{cut}.gguf: it ends at {cut} bytes"):
            load_gguf(short, tokenizer=False)
