"""Every setting of a pruning run with its default (defined in optima_jax.config.default_config).

Run: python -m optima_jax.prune --config configs/<model>.py --config.key=value
"""

from optima_jax.config import default_config


def get_config():
    return default_config()
