"""`python -m optima_jax.export --run runs/X --to gemma|hf [--out DIR]` (console script ``optima-export``):
export a finished run for serving.

  --to gemma   a checkpoint of DeepMind's gemma library (Gemma 2 / Gemma 3): <run>/gemma/params loads with
               gm.ckpts.load_params; gemma_config.json names the gm.nn class (optima_jax.models.loading.gemma_ckpt)
  --to hf      an HF directory (safetensors, config.json, generation_config.json, tokenizer) for transformers
               and vLLM

The same exports are written at the end of a run with ``--config.export_gemma=True`` / ``--config.export_hf=True``.
A run that is not finished, a model the target cannot express or an existing --out directory that is not an
export of this kind is one ``error:`` line and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from optima_jax.checkpoint.exports import TARGETS, export_run
from optima_jax.errors import OptimaError

_MARKERS = {"hf": "config.json", "gemma": "gemma_config.json"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="optima-export", description=__doc__.split("\n\n")[0].split(": ", 1)[-1])
    p.add_argument("--run", required=True, help="a finished run directory (its output_dir)")
    p.add_argument("--to", required=True, choices=TARGETS, help="gemma: the gemma library; hf: transformers/vLLM")
    p.add_argument("--out", default=None, help="export directory (default: <run>/<to>)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = Path(args.out) if args.out else None
        if out is not None and out.exists() and any(out.iterdir()) and not (out / _MARKERS[args.to]).exists():
            raise OptimaError(f"--out {out} is a non-empty directory that is not a {args.to} export; not replacing it")
        written = export_run(args.run, args.to, out)
    except OptimaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    print(f"{args.to} export written to {written}")
    return 0


def cli() -> None:
    """The ``optima-export`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
