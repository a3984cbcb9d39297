"""``torch.optim.Optimizer``s and parameter-grouping helpers."""

from lightning_dyn.optim.factory import OptimizerFactory, build_optimizer
from lightning_dyn.optim.lanton import LANTON
from lightning_dyn.optim.param_groups import param_groups
from lightning_dyn.optim.schedules import warmup_cosine

__all__: list[str] = [
    "LANTON",
    "OptimizerFactory",
    "build_optimizer",
    "param_groups",
    "warmup_cosine",
]
