class OptimaError(ValueError):
    """A user-facing error: bad input, config or data. The message is one line naming what and where."""


def require_extra(module: str, extra: str, what: str):
    """``importlib.import_module(module)``, or an OptimaError naming the pip extra that installs it.

    The extras (pyproject.toml): ``lm-eval`` (optima_jax.lm_eval), ``plots`` (matplotlib, report.png),
    ``tfds`` (the c4-tfds source)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise OptimaError(
            f"{what} needs the optional dependency {module.split('.')[0]!r}, which is not installed: "
            f"pip install 'optima_jax[{extra}]'"
        ) from None


def is_device_oom(e: BaseException) -> bool:
    """A JAX/XLA runtime error for exhausted device memory."""
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"JaxRuntimeError", "XlaRuntimeError"}) and "RESOURCE_EXHAUSTED" in str(e)
