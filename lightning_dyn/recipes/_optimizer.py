"""A recipe's default optimizer, read from its config so that the default is written once.

``RecipeModule(optimizer=None)`` trains with what ``lightning-dyn recipe=<name>`` trains with:
the ``override /optimizer@_global_.optimizer: <name>`` entry of the defaults list of
``configs/recipe/<recipe>.yaml``, i.e. the file ``configs/optimizer/<name>.yaml``, instantiated
as the CLI does. How the result meets the module is :func:`lightning_dyn.optim.build_optimizer`.
"""

from __future__ import annotations

from importlib.resources import files

from lightning_dyn.optim.factory import OptimizerFactory

_OVERRIDE = "override /optimizer@_global_.optimizer"


def recipe_optimizer(recipe: str) -> OptimizerFactory:
    """The optimizer configured for ``recipe`` (a file name in ``configs/recipe/``)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    configs = files("lightning_dyn.configs")
    node = OmegaConf.load(str(configs / "recipe" / f"{recipe}.yaml"))
    defaults = [e for e in OmegaConf.to_container(node).get("defaults", []) if isinstance(e, dict)]
    names = [value for e in defaults for key, value in e.items() if key.startswith(_OVERRIDE)]
    if len(names) != 1:
        raise ValueError(f"configs/recipe/{recipe}.yaml names no optimizer ({_OVERRIDE}: <name>).")
    path = configs / "optimizer" / f"{names[0]}.yaml"
    return instantiate(OmegaConf.load(str(path)), _convert_="all")
