"""Logging intervals of callbacks versus the Trainer's."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn


def warn_unless_multiple(owner: str, interval: int | None, trainer: pl.Trainer) -> None:
    """Warn when ``interval`` is not a multiple of ``trainer.log_every_n_steps``.

    Lightning sends step metrics to the loggers only every ``log_every_n_steps`` steps, so values
    a callback logs at other steps never reach them.
    """
    every = trainer.log_every_n_steps
    if interval is not None and every > 0 and interval % every:
        rank_zero_warn(
            f"{owner}: logging every {interval} steps is not a multiple of the Trainer's "
            f"log_every_n_steps={every}; Lightning sends step metrics to the loggers only every "
            f"{every} steps, so some values will not be recorded."
        )


def due_at_step(step: int, last_step: int, every: int) -> bool:
    """Whether a callback acting every ``every`` optimizer steps acts at ``step``.

    ``on_train_batch_end`` runs once per micro-batch: under gradient accumulation the same
    ``global_step`` comes several times, and only its first call (``step != last_step``) acts.
    """
    return step != last_step and step % every == 0
