"""Remember the first optimizer step at which a logged metric crossed a threshold."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_dyn._checks import check_choice, check_real


class ThresholdCrossing(pl.Callback):
    """Records the first ``trainer.global_step`` at which ``monitor`` passed ``threshold``.

    Grokking is read off this number: the step at which test accuracy first exceeds 99%. The
    metric is read from ``trainer.callback_metrics`` in ``on_train_batch_end`` (for metrics logged
    by ``training_step``) and in ``on_validation_end`` (for validation metrics, after they are
    reduced across ranks), skipping the sanity check. The step is logged once as
    ``threshold_crossing/<monitor>`` and survives checkpoints, so a resumed run reports the same
    step as an uninterrupted one.

    Args:
        monitor: key of the metric, as logged (e.g. ``"test/acc"``).
        threshold: the value to pass.
        mode: ``"max"`` means crossing upwards (``value > threshold``), ``"min"`` downwards.
    """

    def __init__(
        self,
        monitor: str = "test/acc",
        threshold: float = 0.99,
        mode: Literal["max", "min"] = "max",
    ):
        check_choice("mode", mode, ("max", "min"))
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                f"monitor must be the non-empty key of a logged metric; got {monitor!r}."
            )
        check_real("threshold", threshold, any_sign=True)
        self.monitor, self.threshold, self.mode = monitor, float(threshold), mode
        self.crossed_at_step: int | None = None
        self.value_at_crossing: float | None = None
        self._seen_monitor = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor, threshold=self.threshold, mode=self.mode
        )

    def _passed(self, value: float) -> bool:
        return value > self.threshold if self.mode == "max" else value < self.threshold

    def _check(self, trainer: pl.Trainer) -> None:
        if self.crossed_at_step is not None or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        self._seen_monitor = True
        value = float(value)
        if not self._passed(value):
            return
        self.crossed_at_step, self.value_at_crossing = trainer.global_step, value
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"threshold_crossing/{self.monitor}": float(trainer.global_step)},
                step=trainer.global_step,
            )

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._check(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._seen_monitor and self.crossed_at_step is None:
            available = sorted(trainer.callback_metrics)
            rank_zero_warn(
                f"ThresholdCrossing(monitor={self.monitor!r}) never saw that metric; "
                f"logged metrics are: {available}."
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        # Never empty: Lightning drops empty callback states from checkpoints.
        return {
            "crossed_at_step": self.crossed_at_step,
            "value_at_crossing": self.value_at_crossing,
            "seen_monitor": self._seen_monitor,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.crossed_at_step = state_dict["crossed_at_step"]
        self.value_at_crossing = state_dict["value_at_crossing"]
        self._seen_monitor = state_dict["seen_monitor"]
