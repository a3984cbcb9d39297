"""Lightning callbacks: thin adapters that decide when to call ``lightning_dyn.functional``."""

from lightning_dyn.callbacks.threshold_crossing import ThresholdCrossing

__all__ = ["ThresholdCrossing"]
