"""lightning-dyn: training-dynamics methods from recent papers as Lightning plugins.

The top level holds the plugins a user attaches to a ``Trainer`` (callbacks, the optimizer,
modules, metrics, the strategy) and the subpackages; the maths is in
:mod:`lightning_dyn.functional`, the bundled tasks in :mod:`lightning_dyn.recipes`. Everything
loads on first use (PEP 562), so ``import lightning_dyn.functional`` pulls in neither Lightning
nor matplotlib, and the command line answers ``--help`` before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBPACKAGES = (
    "callbacks",
    "functional",
    "loggers",
    "metrics",
    "mixins",
    "nn",
    "optim",
    "recipes",
    "strategies",
)
_PLUGINS = {
    "callbacks": (
        "LayerwiseLRMonitor",
        "NeuralCollapseMonitor",
        "OutlierPairDetector",
        "PerpGrad",
        "SharpnessMonitor",
        "SoftmaxCollapseMonitor",
        "ThresholdCrossing",
    ),
    "optim": ("LANTON", "param_groups"),
    "nn": (
        "HardConstraintLayer",
        "HardConstraintMoE",
        "StableMaxCrossEntropyLoss",
        "StableMaxHead",
    ),
    "metrics": ("NC4Mismatches", "NeuralCollapseStatistics"),
    "strategies": ("ExpertParallelStrategy",),
}
# The plugins a user attaches, by subpackage; the rest lives in the subpackages.
_HOME = {name: package for package, names in _PLUGINS.items() for name in names}

__all__ = [*sorted(_HOME), *_SUBPACKAGES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _HOME:
        value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
