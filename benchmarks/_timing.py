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
