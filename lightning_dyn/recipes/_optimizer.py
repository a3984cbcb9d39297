"""A recipe's default optimizer, read from its config so that the default is written once.

``RecipeModule(optimizer=None)`` trains with what ``lightning-dyn recipe=<name>`` trains with: the
``/optimizer/<name>@optimizer`` entry of ``configs/recipe/<recipe>.yaml``'s defaults list with the
recipe's own ``optimizer:`` values on top (or its ``optimizer:`` node alone), instantiated as the
CLI does. How the result meets the module is :func:`lightning_dyn.optim.build_optimizer`.
"""

from __future__ import annotations

from importlib.resources import files

from lightning_dyn.optim.factory import OptimizerFactory

_PREFIX, _SUFFIX = "/optimizer/", "@optimizer"


def recipe_optimizer(recipe: str) -> OptimizerFactory:
    """The optimizer configured for ``recipe`` (a file name in ``configs/recipe/``)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    configs = files("lightning_dyn.configs")
    node = OmegaConf.load(str(configs / "recipe" / f"{recipe}.yaml"))
    merged = OmegaConf.create()
    for entry in node.get("defaults", []):
        if isinstance(entry, str) and entry.startswith(_PREFIX) and entry.endswith(_SUFFIX):
            name = entry[len(_PREFIX) : -len(_SUFFIX)]
            merged = OmegaConf.load(str(configs / "optimizer" / f"{name}.yaml"))
    merged = OmegaConf.merge(merged, node.get("optimizer") or {})
    return instantiate(merged, _convert_="all")
