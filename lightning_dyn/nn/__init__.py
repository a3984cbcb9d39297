"""``torch.nn.Module``s built on ``lightning_dyn.functional``."""

from lightning_dyn.nn.hard_constraint import HardConstraintLayer
from lightning_dyn.nn.hard_constraint_moe import HardConstraintMoE
from lightning_dyn.nn.stablemax import StableMaxCrossEntropyLoss, StableMaxHead

__all__: list[str] = [
    "HardConstraintLayer",
    "HardConstraintMoE",
    "StableMaxCrossEntropyLoss",
    "StableMaxHead",
]
