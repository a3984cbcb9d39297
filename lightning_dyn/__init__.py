"""lightning-dyn: training-dynamics methods from recent papers as Lightning plugins."""

from lightning_dyn import (
    callbacks,
    functional,
    loggers,
    metrics,
    mixins,
    nn,
    optim,
    recipes,
    strategies,
)
from lightning_dyn.callbacks import *  # noqa: F403
from lightning_dyn.functional import *  # noqa: F403
from lightning_dyn.metrics import *  # noqa: F403
from lightning_dyn.nn import *  # noqa: F403
from lightning_dyn.optim import *  # noqa: F403

__version__ = "0.1.0"

__all__ = [
    *callbacks.__all__,
    *functional.__all__,
    *metrics.__all__,
    *nn.__all__,
    *optim.__all__,
    "loggers",
    "mixins",
    "recipes",
    "strategies",
]
