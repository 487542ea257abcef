#!/usr/bin/env bash
# One prepared GPU run (issue 27): the fast test subset on the GPU, the engine at 128 x 2048 on SmolLM2- and
# Gemma-3-270M-shaped models, the solver on full-size LLaMA-3.2-1B layers, and one end-to-end prune (Wanda +
# OPTIMA) of a random-weight LLaMA-3.2-1B-shaped model at 128 x 2048. Every stage runs under `timeout`, a
# failed or timed-out stage is recorded and the suite goes on, and the whole stays inside --budget seconds.
# Per-stage seconds and peak device memory go to $OUT/gpu_suite.json and $OUT/gpu_suite.md (docs/gpu.md).
#
#   bash benchmarks/gpu_suite.sh                 # on the GPU machine (prepared by benchmarks/gpu_prepare.sh)
#   bash benchmarks/gpu_suite.sh --cpu-smoke --out DIR   # the same stages at tiny sizes on CPU (< 3 minutes)
#
# Options: --out DIR (default $OUT, else /tmp/gpu_suite_out), --wheels DIR (default .whl: installed with
# pip --no-index into /tmp/site when it holds wheels, skipped otherwise), --stage-dir DIR (default .gpu_stage:
# calibration text from gpu_prepare.sh; else a text file is looked up like the tests do), --budget SECONDS.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
MODE=gpu
OUT_DIR=${OUT:-}
WHEELS=.whl
STAGE=.gpu_stage
BUDGET=
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) MODE=cpu-smoke ;;
    --out) OUT_DIR=$2; shift ;;
    --wheels) WHEELS=$2; shift ;;
    --stage-dir) STAGE=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    *) echo "gpu_suite.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
OUT_DIR=${OUT_DIR:-/tmp/gpu_suite_out}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(mktemp -d /tmp/gpu_suite.XXXXXX)
: >"$WORK/stages.jsonl"
T0=$(date +%s)
if [ "$MODE" = gpu ]; then
  BUDGET=${BUDGET:-470}
  NS=128; SL=2048; BLOCKS=3; SMOKE=""; RAPDHG_ROWS=128; RAPDHG_LAYERS=4; EVAL=1
  LAYERS=self_attn.q_proj,self_attn.o_proj,mlp.gate_proj,mlp.down_proj
  TESTS="tests/test_device_resident.py tests/test_solve_rows.py tests/test_selectors.py tests/test_engine.py
         tests/test_models_parity.py tests/test_paper_setting.py tests/test_adam_update.py tests/test_attention.py"
  TEST_ARGS=(-n 6 -k "not 8_devices")
  # float32 parity bounds (1e-4) assume true float32 matmuls; JAX's GPU default is TF32
  export JAX_DEFAULT_MATMUL_PRECISION=highest  # those two force 8 CPU devices: no GPU work
  declare -A LIMIT=([models]=60 [e2e]=220 [engine_smollm2]=50 [engine_gemma3]=50 [solver]=90 [tests]=150)
else
  BUDGET=${BUDGET:-150}
  NS=4; SL=64; BLOCKS=2; SMOKE="--smoke"; RAPDHG_ROWS=8; RAPDHG_LAYERS=1; EVAL=0
  LAYERS=self_attn.q_proj,mlp.down_proj
  TESTS="tests/test_device_resident.py::test_fetch_refuses_matrices"
  TEST_ARGS=()
  declare -A LIMIT=([models]=30 [e2e]=50 [engine_smollm2]=30 [engine_gemma3]=30 [solver]=55 [tests]=25)
  export JAX_PLATFORMS=cpu
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false TQDM_DISABLE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# the tests' text (tests/tiny.py) where ../shared/data does not travel
[ -f "$STAGE/wiki_train.txt" ] && export OPTIMA_JAX_DATA_DIR=${OPTIMA_JAX_DATA_DIR:-$(cd "$STAGE" && pwd)}
LOG="$OUT_DIR/gpu_suite.log"
: >"$LOG"
say() { echo "[gpu_suite $(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }

record() {  # record NAME STATUS RC WALL NOTE
  printf '{"stage": "%s", "status": "%s", "rc": %s, "wall_s": %s, "note": "%s"}\n' "$1" "$2" "$3" "$4" "$5" \
    >>"$WORK/stages.jsonl"
}

stage() {  # stage NAME CMD...: run under timeout min(limit, time left), record status and seconds
  local name=$1; shift
  local left=$((BUDGET - ($(date +%s) - T0)))
  local limit=${LIMIT[$name]}
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    say "$name: skipped, ${left}s of the budget left"
    record "$name" skipped null 0 "budget spent"
    return
  fi
  say "$name: start (limit ${limit}s)"
  local t=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  local wall=$(python3 -c "import time; print(round(time.time() - $t, 1))")
  local status=ok
  [ $rc -ne 0 ] && status=failed
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status=timeout
  say "$name: $status (rc $rc, ${wall}s)"
  record "$name" "$status" "$rc" "$wall" ""
}

# 1. wheels for what the machine lacks (gpu_prepare.sh downloads them); skipped without any
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  t=$(date +%s)
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$WHEELS"/*.whl >>"$LOG" 2>&1; then
    record install ok 0 $(($(date +%s) - t)) "$(ls "$WHEELS"/*.whl | xargs -n1 basename | tr '\n' ' ')"
  else
    record install failed 1 $(($(date +%s) - t)) "pip install of $WHEELS failed"
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  say "install: wheels from $WHEELS"
else
  record install skipped null 0 "no wheels in $WHEELS"
  say "install: skipped (no wheels in $WHEELS)"
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}

# 2. the package from the source tree: models/ and configs/ install as optima_jax.models / .configs; without
#    an installation, links in this (throwaway) copy of the tree stand in for the package-dir mapping
if ! python3 -c "import optima_jax.models, optima_jax.configs" >>"$LOG" 2>&1; then
  ln -sfn ../models optima_jax/models
  ln -sfn ../configs optima_jax/configs
  say "package: linked optima_jax/models and optima_jax/configs in the working copy"
fi
python3 - "$WORK/meta.json" "$MODE" "$BUDGET" <<'EOF' >>"$LOG" 2>&1
import json, sys, jax
d = jax.local_devices()[0]
json.dump({"mode": sys.argv[2], "budget_s": int(sys.argv[3]), "jax": jax.__version__,
           "device": f"{d.platform}: {getattr(d, 'device_kind', d)} x{jax.local_device_count()}"}, open(sys.argv[1], "w"))
EOF

# 3. calibration text (staged by gpu_prepare.sh, else found like the tests find it)
TEXT=$STAGE/calib.txt
EVAL_TEXT=$STAGE/eval.txt
if [ ! -f "$TEXT" ]; then
  TEXT=$(python3 -c "
import os, pathlib
for d in (os.environ.get('OPTIMA_JAX_DATA_DIR'), '../shared/data', pathlib.Path.home() / '.cache/optima_jax/data'):
    for n in ('sotu.txt', 'wiki_train.txt'):
        if d and (pathlib.Path(d) / n).exists():
            print(pathlib.Path(d, n).resolve()); raise SystemExit
")
  EVAL_TEXT=$TEXT
fi
[ "$EVAL" = 1 ] || EVAL_TEXT=""
say "mode $MODE, budget ${BUDGET}s, text $TEXT, work $WORK"
ST="python3 benchmarks/gpu_stages.py"

stage models $ST models --dir "$WORK/models" $SMOKE --json "$WORK/models.json"
stage e2e $ST e2e --model "$WORK/models/llama3_2_1b" --text "$TEXT" --eval-text "$EVAL_TEXT" --nsamples $NS \
  --seqlen $SL --run-dir "$WORK/e2e_run" --json "$WORK/e2e.json"
stage engine_smollm2 $ST engine --model "$WORK/models/smollm2_135m" --text "$TEXT" --nsamples $NS --seqlen $SL \
  --blocks $BLOCKS --json "$WORK/engine_smollm2.json"
stage engine_gemma3 $ST engine --model "$WORK/models/gemma3_270m" --text "$TEXT" --nsamples $NS --seqlen $SL \
  --blocks $BLOCKS --json "$WORK/engine_gemma3.json"
stage solver $ST solver $SMOKE --layers $LAYERS --rapdhg-rows $RAPDHG_ROWS \
  --rapdhg-layers $RAPDHG_LAYERS --json "$WORK/solver.json"
# shellcheck disable=SC2086
stage tests python3 -m pytest -q -m "not slow" -p no:cacheprovider "${TEST_ARGS[@]}" --junitxml="$WORK/tests.xml" $TESTS

python3 - "$WORK/meta.json" "$(($(date +%s) - T0))" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1])) if __import__("os").path.exists(sys.argv[1]) else {}
m["total_s"] = int(sys.argv[2]); json.dump(m, open(sys.argv[1], "w"))
EOF
$ST report --work "$WORK" --out "$OUT_DIR" | tee -a "$LOG"
rm -rf "$WORK"  # random checkpoints and the e2e run (7 GB on the GPU); the results are in $OUT_DIR
say "done: $OUT_DIR/gpu_suite.json, $OUT_DIR/gpu_suite.md"
