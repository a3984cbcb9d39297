"""``torchmetrics.Metric``s (state and DDP reduction) over ``lightning_dyn.functional``."""

from lightning_dyn.metrics.nc4_mismatches import NC4Mismatches
from lightning_dyn.metrics.neural_collapse_statistics import NeuralCollapseStatistics

__all__: list[str] = [
    "NC4Mismatches",
    "NeuralCollapseStatistics",
]
