class OptimaError(ValueError):
    """A user-facing error: bad input, config or data. The message is one line naming what and where."""
