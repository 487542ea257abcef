"""`python -m optima_jax.prune --config configs/<model>.py [--config.key=value ...]` (console script
``optima-prune``): the command line around ``optima_jax.pipeline.run``.

Bad input is one ``error:`` line and exit code 2; a failed write or exhausted device memory is one line with
what to change and exit code 1; an interrupted run says how to resume (exit code 130).
"""

from __future__ import annotations

import sys
from pathlib import Path

from optima_jax import checkpoint
from optima_jax.config import HelpRequested, parse_args
from optima_jax.errors import OptimaError, is_device_oom
from optima_jax.pipeline import run
from optima_jax.validation import validate

__all__ = ["cli", "main", "run"]


_RESUME = "rerun the same command to resume from the last finished block"


def _resume_hint(cfg) -> str:
    """A clause saying that rerunning resumes, only when cfg's output directory holds this run's progress."""
    if cfg is None:
        return ""
    try:
        out = Path(cfg.output_dir).absolute()
        if checkpoint.has_progress(out, checkpoint.run_fingerprint(cfg.to_dict())):
            return f"; the finished blocks in {out} are kept: {_RESUME}"
    except Exception:  # the hint must never hide the error itself
        pass
    return ""


def _oom_message(e: BaseException, cfg) -> str:
    first = next((l.strip() for l in str(e).splitlines() if l.strip()), "RESOURCE_EXHAUSTED")[:200]
    settings = ""
    if cfg is not None:
        try:
            settings = (
                f"calibration.micro_batch (now {cfg.calibration.micro_batch}) or eval.batch_size (now "
                f"{cfg.eval.batch_size}), or set hidden_states_on=host (now {cfg.hidden_states_on}), "
                f"mesh.shard_params=True, a smaller solver.memory_budget_gb (now {cfg.solver.memory_budget_gb})"
                f" or dtype=bfloat16 (now {cfg.dtype})"
            )
        except Exception:
            settings = ""
    settings = settings or (
        "calibration.micro_batch or eval.batch_size, or set hidden_states_on=host, "
        "mesh.shard_params=True, a smaller solver.memory_budget_gb or dtype=bfloat16"
    )
    return f"out of device memory ({first}); to use less, lower {settings}"


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    cfg = None
    try:
        cfg, _ = parse_args(argv)
    except HelpRequested as h:
        print(h)
        return 0
    except OptimaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        validate(cfg)
        run(cfg)
    except OptimaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read or write the checks could not foresee: a full disk, a lost mount
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}{_resume_hint(cfg)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = _resume_hint(cfg)
        print("interrupted" + (f": {_RESUME}" if hint else ""), file=sys.stderr)
        return 130
    except Exception as e:
        if not is_device_oom(e):
            raise
        print(f"error: {_oom_message(e, cfg)}{_resume_hint(cfg)}", file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    """The ``optima-prune`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
