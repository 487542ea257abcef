"""Our lm-eval backend against lm-eval's own HF backend (HFLM) on the same tiny random checkpoint, and a local
multiple-choice task (tests/data) run offline through lm-eval's evaluator with both backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lm_eval")

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

from lm_eval.api.instance import Instance  # noqa: E402

from optima_jax.lm_eval import OptimaLM  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
MAX_LEN = 40


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny.make_checkpoint(tmp_path_factory.mktemp("lmeval_llama"), "llama", seed=3)


@pytest.fixture(scope="module")
def hflm(ckpt):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(ckpt), device="cpu", dtype="float32", batch_size=4, max_length=MAX_LEN)


@pytest.fixture(scope="module")
def ours(ckpt):
    return OptimaLM(model=str(ckpt), batch_size=4, max_length=MAX_LEN)


def _requests(kind, args_list):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args_list)]


def test_loglikelihood_matches_hflm(hflm, ours):
    text = tiny.shared_text("wiki_test.txt").read_text()[:3000]
    args = [
        ("The capital of France is", " Paris"),
        ("The capital of France is ", "Berlin and more"),  # trailing space moves to the continuation
        ("", "An empty context uses the prefix token"),
        (text[:200], text[200:260]),  # long: left-truncated to max_length
        (text[500:540], " the"),
        ("Numbers: 1 2 3", " 4 5 6"),
    ]
    a = ours.loglikelihood(_requests("loglikelihood", args))
    b = hflm.loglikelihood(_requests("loglikelihood", args))
    for (la, ga), (lb, gb), arg in zip(a, b, args):
        assert la == pytest.approx(lb, rel=1e-3), arg
        assert ga == gb, arg


def test_loglikelihood_rolling_matches_hflm(hflm, ours):
    text = tiny.shared_text("wiki_test.txt").read_text()
    args = [(text[:150],), (text[1000:1500],)]  # the second spans several rolling windows
    a = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", args))
    b = hflm.loglikelihood_rolling(_requests("loglikelihood_rolling", args))
    np.testing.assert_allclose(a, b, rtol=1e-3)


def test_generate_until_matches_hflm_greedy(hflm, ours):
    args = [("The history of", {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False})]
    a = ours.generate_until(_requests("generate_until", args))
    b = hflm.generate_until(_requests("generate_until", args))
    assert a == b


def test_local_task_through_evaluator(ckpt, ours, hflm, monkeypatch):
    """tests/data/optima_mc_test.yaml (json dataset from tests/data) through lm_eval.simple_evaluate, offline:
    the same accuracies as lm-eval's HF backend."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tm = TaskManager(include_path=str(DATA))
    r_ours = lm_eval.simple_evaluate(model=ours, tasks=["optima_mc_test"], task_manager=tm)
    r_hf = lm_eval.simple_evaluate(model=hflm, tasks=["optima_mc_test"], task_manager=tm)
    ro, rh = r_ours["results"]["optima_mc_test"], r_hf["results"]["optima_mc_test"]
    assert ro["acc,none"] == pytest.approx(rh["acc,none"])
    assert ro["acc_norm,none"] == pytest.approx(rh["acc_norm,none"])
    n_docs = sum(1 for _ in open(DATA / "optima_mc.jsonl"))
    assert r_ours["n-samples"]["optima_mc_test"]["effective"] == n_docs


@pytest.mark.slow
def test_wrapper_cli_registers_model(ckpt, tmp_path):
    """``python -m optima_jax.lm_eval --model optima_jax ...`` runs lm-eval's CLI with our model registered."""
    out = tmp_path / "res"
    env = dict(os.environ, HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "optima_jax.lm_eval",
            "--model",
            "optima_jax",
            "--model_args",
            f"model={ckpt},batch_size=4,max_length={MAX_LEN}",
            "--tasks",
            "optima_mc_test",
            "--include_path",
            str(DATA),
            "--output_path",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "optima_mc_test" in proc.stdout
