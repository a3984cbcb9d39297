"""lightning-dyn: training-dynamics methods from recent papers as Lightning plugins.

The top level holds the plugins a user attaches to a ``Trainer`` (callbacks, the optimizer,
modules, metrics, the strategy) and the subpackages; the maths is in
:mod:`lightning_dyn.functional`, the bundled tasks in :mod:`lightning_dyn.recipes`. Everything
loads on first use (PEP 562), so ``import lightning_dyn.functional`` pulls in neither Lightning
nor matplotlib.
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
# Subpackages whose public names are the plugins a user attaches, searched in this order (the
# light ones first); of optim/ only these two, its other names serve the recipes.
_PLUGIN_PACKAGES = ("nn", "metrics", "optim", "callbacks", "strategies")
_OPTIM_PLUGINS = ("LANTON", "param_groups")


def _plugins(package: str) -> tuple[str, ...]:
    if package == "optim":
        return _OPTIM_PLUGINS
    return tuple(importlib.import_module(f"{__name__}.{package}").__all__)


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "__all__":  # asked by `from lightning_dyn import *`
        names = sorted(n for package in _PLUGIN_PACKAGES for n in _plugins(package))
        globals()["__all__"] = value = [*names, *_SUBPACKAGES, "__version__"]
        return value
    if not name.startswith("__"):
        for package in _PLUGIN_PACKAGES:
            if name in _plugins(package):
                value = getattr(importlib.import_module(f"{__name__}.{package}"), name)
                globals()[name] = value  # later lookups skip __getattr__
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__getattr__("__all__")})
