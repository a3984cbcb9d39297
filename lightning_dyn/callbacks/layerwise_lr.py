"""Log the per-layer learning rates and noise estimates of a layerwise optimizer (LANTON)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_dyn._checks import check_bool, check_positive_int
from lightning_dyn.callbacks._intervals import due_at_step, warn_unless_multiple
from lightning_dyn.loggers import log_figure


class LayerwiseLRMonitor(pl.Callback):
    """Per-layer effective learning rate and noise estimate, as scalars and as a heat map.

    Runs in ``on_train_batch_end`` every ``every_n_steps`` optimizer steps, for every optimizer
    with an ``effective_lrs()`` method (:class:`lightning_dyn.optim.LANTON`), and logs
    ``layerwise_lr/lr/<name>`` and ``layerwise_lr/noise/<name>``. The scheduler-driven group
    learning rate is ``LearningRateMonitor``'s job; this shows what each layer actually got.
    When training ends it logs ``layerwise_lr/heatmap`` (layers × logged steps, log10 of the
    learning rate) through :mod:`lightning_dyn.loggers`: a W&B image, or a PNG in the run dir.
    The history behind it is checkpointed, thinned to at most ``max_history`` columns.

    Args:
        every_n_steps: logging interval in optimizer steps, a multiple of the Trainer's
            ``log_every_n_steps``.
        heatmap: draw the heat map at the end of training.
        max_history: most logged steps kept for the heat map (every other one is dropped when
            full, so memory stays bounded on long runs).
    """

    def __init__(self, every_n_steps: int = 10, heatmap: bool = True, max_history: int = 512):
        check_positive_int("every_n_steps", every_n_steps)
        check_positive_int("max_history", max_history, minimum=2)
        check_bool("heatmap", heatmap)
        self.every_n_steps, self.heatmap, self.max_history = every_n_steps, heatmap, max_history
        self.steps: list[int] = []
        self.names: list[str] = []
        self.history: list[list[float]] = []
        self._last_step = -1

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        warn_unless_multiple("LayerwiseLRMonitor", self.every_n_steps, trainer)
        if not any(hasattr(opt, "effective_lrs") for opt in trainer.optimizers):
            found = [type(o).__name__ for o in trainer.optimizers]
            rank_zero_warn(
                "LayerwiseLRMonitor found no optimizer with effective_lrs() (e.g. "
                f"lightning_dyn.optim.LANTON) among {found}; it will log nothing."
            )

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any):
        step = trainer.global_step
        if not due_at_step(step, self._last_step, self.every_n_steps):
            return
        self._last_step = step
        lrs: dict[str, float] = {}
        for optimizer in trainer.optimizers:
            if not hasattr(optimizer, "effective_lrs"):
                continue
            for name, lr in optimizer.effective_lrs().items():
                lrs[name] = float(lr)
            for name, noise in optimizer.noise_estimates().items():
                pl_module.log(
                    f"layerwise_lr/noise/{name}", float(noise), on_step=True, on_epoch=False
                )
        for name, lr in lrs.items():
            pl_module.log(f"layerwise_lr/lr/{name}", lr, on_step=True, on_epoch=False)
        if lrs:
            self._record(step, lrs)

    def _record(self, step: int, lrs: dict[str, float]) -> None:
        if not self.names:
            self.names = list(lrs)
        self.steps.append(step)
        self.history.append([lrs.get(name, float("nan")) for name in self.names])
        if len(self.steps) > self.max_history:
            self.steps, self.history = self.steps[::2], self.history[::2]

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self.heatmap and self.history and trainer.is_global_zero):
            return
        import matplotlib.pyplot as plt
        import numpy as np

        values = np.log10(np.asarray(self.history, dtype=float).T)  # (layers, logged steps)
        height = 1.0 + 0.25 * len(self.names)
        figure, axis = plt.subplots(figsize=(8, height), dpi=100)
        image = axis.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis")
        axis.set_yticks(range(len(self.names)), self.names, fontsize=7)
        ticks = np.linspace(0, len(self.steps) - 1, min(6, len(self.steps))).astype(int)
        axis.set_xticks(ticks, [str(self.steps[i]) for i in ticks])
        axis.set_xlabel("optimizer step")
        figure.colorbar(image, ax=axis, label="log10 effective lr")
        log_figure(trainer, "layerwise_lr/heatmap", figure)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "names": self.names,
            "history": self.history,
            "last_step": self._last_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps, self.names = list(state_dict["steps"]), list(state_dict["names"])
        self.history = [list(row) for row in state_dict["history"]]
        self._last_step = state_dict["last_step"]
