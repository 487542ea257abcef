#!/usr/bin/env bash
# Builds (or reuses) a private virtualenv running DeepMind's `gemma` 3.3.0
# library, for tests that compare optima_jax against it in a subprocess.
#
#   bash tests/gemma_lib/setup_env.sh      # last stdout line: the venv's python
#
# The venv lives at ${OPTIMA_JAX_CACHE:-$HOME/.cache/optima_jax}/gemma_lib_venv
# and is reused while its stamp (hash of requirements.txt, this script and the
# python version) matches. The project's own environment is never touched.
#
# Packages come from requirements.txt, installed with --no-deps: resolving
# gemma's dependencies pulls kauldron -> clu -> tensorflow and takes >20 min.
# kauldron 1.3.0 (the kauldron that gemma 3.3.0 works with) imports
# tensorflow, tensorflow_datasets and tensorboard at module level in five
# modules that gemma's model, checkpoint and sampler code import but never run
# (training setup, tf.data iterators, TensorBoard writers). Instead of
# installing TensorFlow, those six import lines are patched below to fall back
# to placeholder modules when the real package is missing. The placeholders are
# not put in sys.modules (so etils, flax, einops and grain still see "no
# tensorflow"), and calling anything in them raises.
#
# Environment: OPTIMA_JAX_CACHE (cache root), OPTIMA_JAX_GEMMA_PYTHON (python
# >= 3.11 used to create the venv; default python3).
set -uo pipefail

die() { echo "setup_env.sh: error: $*" >&2; exit 1; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)" || die "cannot find the script's folder"
req="$here/requirements.txt"
[ -f "$req" ] || die "missing $req"
base_python="${OPTIMA_JAX_GEMMA_PYTHON:-python3}"
command -v "$base_python" >/dev/null 2>&1 || die "no $base_python on PATH"
"$base_python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || die "$base_python must be Python >= 3.11 (gemma 3.3.0 needs it)"

cache="${OPTIMA_JAX_CACHE:-$HOME/.cache/optima_jax}"
venv="$cache/gemma_lib_venv"
stamp="$venv/.optima_jax_stamp"
log="$cache/gemma_lib_venv.log"
mkdir -p "$cache" || die "cannot create $cache"

pyver="$("$base_python" -c 'import sys; print(sys.version.split()[0])')"
want="$(cat "$req" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)-py$pyver"

verify() {
  "$venv/bin/python" -c 'from gemma import gm; gm.nn.Gemma3_270M' >>"$log" 2>&1
}

# One builder at a time (parallel test workers share the cache).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache/gemma_lib_venv.lock" || die "cannot open the lock file in $cache"
  flock 9 || die "cannot lock $cache/gemma_lib_venv.lock"
fi

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  : >"$log"
  if verify; then
    echo "$venv/bin/python"
    exit 0
  fi
  echo "setup_env.sh: existing venv fails the import check, rebuilding" >&2
fi

start=$SECONDS
echo "setup_env.sh: building $venv (log: $log)" >&2
: >"$log"
rm -rf "$venv" || die "cannot remove the old $venv"
"$base_python" -m venv "$venv" >>"$log" 2>&1 || die "python -m venv failed (log: $log)"
"$venv/bin/python" -m pip install --no-deps --only-binary=:all: --no-input \
  --disable-pip-version-check -r "$req" >>"$log" 2>&1 \
  || die "pip install --no-deps -r $req failed (log: $log)"

"$venv/bin/python" - >>"$log" 2>&1 <<'PYEOF' || die "patching kauldron/clu failed (log: $log)"
import pathlib
import re
import sysconfig

site = pathlib.Path(sysconfig.get_paths()["purelib"])

(site / "_optima_jax_absent.py").write_text('''\
"""Placeholders for tensorflow, tensorflow_datasets and tensorboard.

Written by optima_jax's tests/gemma_lib/setup_env.sh. Used only by the kauldron
and clu lines that it patched, when the real package is not installed. These
module objects are never put in sys.modules. Attribute access gives placeholder
classes (fine in annotations, isinstance and subclassing); calling one raises.
"""

import types


class _PlaceholderMeta(type):

  def __getattr__(cls, name):
    if name.startswith("__") and name.endswith("__"):
      raise AttributeError(name)
    return _placeholder(cls.__qualname__ + "." + name)

  def __getitem__(cls, item):
    return cls

  def __call__(cls, *args, **kwargs):
    raise RuntimeError(
        cls.__qualname__ + " is a placeholder: the real package is not"
        " installed in optima_jax's gemma_lib venv")


def _placeholder(qualname):
  return _PlaceholderMeta(qualname.rsplit(".", 1)[-1], (),
                          {"__qualname__": qualname})


class _Module(types.ModuleType):

  def __getattr__(self, name):
    if name.startswith("__") and name.endswith("__"):
      raise AttributeError(name)
    value = _placeholder(self.__name__ + "." + name)
    setattr(self, name, value)
    return value


tensorflow = _Module("tensorflow")
tensorflow_datasets = _Module("tensorflow_datasets")
tensorboard_hparams_api = _Module("tensorboard.plugins.hparams.api")
''')

FALLBACK = {
    "import tensorflow as tf": "from _optima_jax_absent import tensorflow as tf",
    "import tensorflow_datasets as tfds":
        "from _optima_jax_absent import tensorflow_datasets as tfds",
    "from tensorboard.plugins.hparams import api as hparams_api":
        "from _optima_jax_absent import tensorboard_hparams_api as hparams_api",
}
PATCHES = {
    "kauldron/typing/array_types.py": ["import tensorflow as tf"],
    "kauldron/train/setup_utils.py": ["import tensorflow as tf"],
    "kauldron/data/iterators/noop_handler.py": ["import tensorflow as tf"],
    "kauldron/data/iterators/tfdata_handler.py": [
        "import tensorflow as tf", "import tensorflow_datasets as tfds"],
    "clu/metric_writers/tf/summary_writer.py": [
        "import tensorflow as tf",
        "from tensorboard.plugins.hparams import api as hparams_api"],
}
for rel, lines in PATCHES.items():
  path = site / rel
  src = path.read_text()
  for line in lines:
    pattern = re.compile("^" + re.escape(line) + "$", re.M)
    if len(pattern.findall(src)) != 1:
      raise SystemExit(f"{rel}: expected one line {line!r}")
    new = ("try:\n  " + line + "\nexcept ImportError:"
           "  # optima_jax gemma_lib venv: not installed\n  "
           + FALLBACK[line])
    src = pattern.sub(lambda m: new, src)
  path.write_text(src)
  print("patched", rel)
PYEOF

verify || die "import check 'from gemma import gm; gm.nn.Gemma3_270M' failed (log: $log)"
echo "$want" >"$stamp" || die "cannot write $stamp"
echo "setup_env.sh: built in $((SECONDS - start)) s" >&2
echo "$venv/bin/python"
