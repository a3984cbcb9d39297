"""Timing helpers shared by the benchmark scripts (run them as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl


class StepClock(pl.Callback):
    """Wall time from the start of optimizer step ``warmup`` to the end of training."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, *_: Any) -> None:
        self.end = time.perf_counter()

    def seconds_per_step(self, steps: int) -> float:
        return (self.end - self.start) / (steps - self.warmup)


def bare_trainer(root: str, max_steps: int, **kwargs: Any) -> pl.Trainer:
    """A CPU Trainer for benchmarks: no logger, checkpoints, progress bar, summary or validation."""
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "max_steps": max_steps,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "default_root_dir": root,
        **kwargs,
    }
    return pl.Trainer(**options)
