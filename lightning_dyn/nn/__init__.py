"""``torch.nn.Module``s built on ``lightning_dyn.functional``."""

from lightning_dyn.nn.stablemax import StableMaxCrossEntropyLoss, StableMaxHead

__all__: list[str] = ["StableMaxCrossEntropyLoss", "StableMaxHead"]
