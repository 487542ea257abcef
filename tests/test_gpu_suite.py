"""benchmarks/gpu_suite.sh --cpu-smoke: every stage of the prepared GPU run works at tiny sizes on CPU, and each
is recorded with its status, seconds and numbers in gpu_suite.json / gpu_suite.md."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["install", "models", "e2e", "engine_smollm2", "engine_gemma3", "solver", "tests"]


pytestmark = pytest.mark.slow  # about 100 s on a loaded 2-core CPU (each stage is a fresh process that compiles)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_smoke")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    p = subprocess.run(
        ["bash", "benchmarks/gpu_suite.sh", "--cpu-smoke", "--out", str(out), "--wheels", str(out / "no_wheels")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = (out / "gpu_suite.log").read_text() if (out / "gpu_suite.log").exists() else ""
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return json.loads((out / "gpu_suite.json").read_text()), (out / "gpu_suite.md").read_text(), log


def test_every_stage_runs_and_reports_its_numbers(smoke):
    res, md, log = smoke
    assert res["mode"] == "cpu-smoke" and res["device"].startswith("cpu")
    assert list(res["stages"]) == STAGES
    for name in STAGES[1:]:
        st = res["stages"][name]
        assert st["status"] == "ok" and st["rc"] == 0, (name, st, log[-3000:])
        assert st["wall_s"] > 0
        assert f"| {name} | ok |" in md
    assert 0 < res["total_s"] <= res["budget_s"]

    e2e = res["stages"]["e2e"]
    assert e2e["linears"] == 2 * 7  # both blocks of the tiny LLaMA, every linear
    assert e2e["timings"]["total_s"] > 0 and e2e["timings"]["hessians_s"] > 0 and e2e["peak_host_mb"] > 0
    assert e2e["argv"][:2] == ["--config", "llama3_2_1b"]
    for name in ("engine_smollm2", "engine_gemma3"):
        eng = res["stages"][name]
        assert len(eng["blocks"]) == 2 and eng["block_s"] > 0 and eng["projected_all_blocks_s"] > 0
    layers = res["stages"]["solver"]["layers"]
    assert [x["linear"] for x in layers] == ["self_attn.q_proj", "mlp.down_proj"]  # the smoke's two shapes
    assert all(x["exact_s"] > 0 and x["exact_converged"] == 1.0 for x in layers)
    assert layers[0]["rapdhg_whole_layer_s"] > 0 and layers[0]["rapdhg_optimal"] > 0  # rAPDHG: the first only
    assert all(x["refine_s"] > 0 and x["refine_iterations"] >= 1 for x in layers)  # the mask refiner, every layer
    assert "x exact)" in md
    assert res["stages"]["tests"]["pytest"]["passed"] >= 1 and res["stages"]["tests"]["pytest"]["failures"] == 0


def test_wheel_install_is_skipped_without_wheels(smoke):
    res, md, _ = smoke
    st = res["stages"]["install"]
    assert st["status"] == "skipped" and "no wheels in" in st["note"]
    assert "| install | skipped |" in md
