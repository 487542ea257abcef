#!/usr/bin/env bash
# Run HERE (with network), before spending GPU time: stage what benchmarks/gpu_suite.sh needs on the GPU
# machine, which reaches no registry and receives only the working tree (64 MiB in all) and carried paths.
#   .whl/        wheels of the packages optima_jax (and the test subset) imports that the GPU image lacks,
#                pure-Python, pinned to the versions tested here (the image has everything else: jax, flax,
#                optax, orbax, transformers, tokenizers, safetensors, torch, pytest, ...)
#   .gpu_stage/  calibration text (the first 3 MB of the speeches), evaluation text (Wikipedia test) and the
#                Wikipedia training text the tests train their tiny tokenizer on (OPTIMA_JAX_DATA_DIR there)
# Both folders are git-ignored. It prints the exact device `run` call to make.
set -euo pipefail
cd "$(dirname "$0")/.."

# Imported at module level by the package (ml_collections: config; gguf: the GGUF loader) or by the tests in
# the GPU subset (mpax: tests/test_paper_setting.py). Their own needs (absl-py, PyYAML, numpy, requests, tqdm,
# chex, jax) are on the image.
WHEELS="ml_collections==1.1.0 gguf==0.19.0 mpax==0.2.4"
rm -rf .whl && mkdir -p .whl .gpu_stage
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $WHEELS

python3 - <<'EOF'
import os
from pathlib import Path

dirs = [os.environ.get("OPTIMA_JAX_DATA_DIR"), "../shared/data", Path.home() / ".cache/optima_jax/data"]
def find(name):
    for d in dirs:
        if d and (Path(d) / name).exists():
            return Path(d) / name
    raise SystemExit(f"{name} not found in {dirs}: run bash setup.sh first")
Path(".gpu_stage/calib.txt").write_bytes(find("sotu.txt").read_bytes()[: 3 << 20])
Path(".gpu_stage/eval.txt").write_bytes(find("wiki_test.txt").read_bytes())
Path(".gpu_stage/wiki_train.txt").write_bytes(find("wiki_train.txt").read_bytes())  # the tests' tiny tokenizer
EOF

tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
carried=$(du -cb .whl .gpu_stage | tail -1 | cut -f1)
total=$(( (tracked + ${untracked:-0} + carried) / 1048576 ))
ls -l .whl .gpu_stage
echo "travels: ${total} MiB of 64 (tracked $((tracked / 1048576)), untracked $((${untracked:-0} / 1048576)), carried $((carried / 1048576)))"
[ "$total" -lt 64 ] || { echo "too large to travel: ignore or remove untracked files first" >&2; exit 1; }
cat <<'EOF'

Make this one device call (nvidia-h200 or nvidia-h100-x1; about 8 minutes), then fill docs/gpu.md from the
returned gpu_suite.md / gpu_suite.json:

  run(command="bash benchmarks/gpu_suite.sh", carry=[".whl", ".gpu_stage"], timeout_s=560)
EOF
