"""Lightning callbacks: thin adapters that decide when to call ``lightning_dyn.functional``."""

from lightning_dyn.callbacks.layerwise_lr import LayerwiseLRMonitor
from lightning_dyn.callbacks.metric_curves import MetricCurves
from lightning_dyn.callbacks.neural_collapse import NeuralCollapseMonitor
from lightning_dyn.callbacks.outlier_pairs import OutlierPairDetector
from lightning_dyn.callbacks.perp_grad import PerpGrad
from lightning_dyn.callbacks.sharpness import SharpnessMonitor
from lightning_dyn.callbacks.softmax_collapse import SoftmaxCollapseMonitor
from lightning_dyn.callbacks.threshold_crossing import ThresholdCrossing

__all__ = [
    "LayerwiseLRMonitor",
    "MetricCurves",
    "NeuralCollapseMonitor",
    "OutlierPairDetector",
    "PerpGrad",
    "SharpnessMonitor",
    "SoftmaxCollapseMonitor",
    "ThresholdCrossing",
]
