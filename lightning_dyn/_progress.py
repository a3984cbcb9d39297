"""A progress bar that counts optimizer steps rather than batches of one epoch.

Full-batch recipes run one step per epoch, where Lightning's bar would restart at every epoch and
open a validation bar each step.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from typing_extensions import override


class StepProgressBar(TQDMProgressBar):
    """One bar over ``trainer.max_steps``; validation runs update its metrics, not a bar."""

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        if bar.total is None or trainer.current_epoch == 0:
            bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
            bar.initial = trainer.global_step
            bar.set_description("Steps")

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any):
        step = trainer.global_step
        if self._should_update(step, self.train_progress_bar.total):
            self.train_progress_bar.n = step
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The bar lives across epochs."""

    @override
    def on_validation_start(self, *_: Any) -> None:
        """No validation bar."""

    @override
    def on_validation_batch_start(self, *_: Any, **__: Any) -> None:
        """No validation bar."""

    @override
    def on_validation_batch_end(self, *_: Any, **__: Any) -> None:
        """No validation bar."""

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._train_progress_bar is not None and trainer.state.fn == "fit":
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
