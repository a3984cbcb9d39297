"""One divergence policy for every monitor: warn once, record NaN, never raise, never hang a rank.

A run that diverges (NaN or inf in the parameters or the logits) is a result the user wants to
see in the logs, not a crash of a diagnostic. When a monitor's measurement meets non-finite
values it logs NaN for its scalar metrics at that step, warns once per fit with the step,
remembers the first such step (``diverged_at_step``, saved in the callback's checkpoint state)
and skips the rest of the measurement. Training goes on as the user configured it.

Under DDP the decision must be the same on every rank, or one rank would skip a collective the
others wait in: :meth:`DivergenceGuard.all_finite` reduces the local verdict over the ranks (one
tiny collective on every rank, every measurement).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor


class DivergenceGuard:
    """The divergence policy of one monitor (see the module docstring).

    Args:
        owner: the monitor's name, for the warning.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.diverged_at_step: int | None = None
        self._warned_this_fit = False

    def start_fit(self) -> None:
        """A new fit warns again (the first step stays recorded)."""
        self._warned_this_fit = False

    def all_finite(
        self, trainer: pl.Trainer, values: Iterable[Tensor | float | None], synced: bool = False
    ) -> bool:
        """Whether every value is finite on every rank; records the divergence when not.

        ``synced=True`` says the values are already the same on every rank (results of a
        reduction), so no collective is needed to agree.
        """
        local = all(_finite(v) for v in values)
        if trainer.world_size > 1 and not synced:
            flag = torch.tensor(float(local), device=trainer.strategy.root_device)
            local = bool(trainer.strategy.reduce(flag, reduce_op="min") > 0.5)
        if not local:
            self.record(trainer)
        return local

    def record(self, trainer: pl.Trainer, what: str = "non-finite values") -> None:
        """Note a divergence at the current step and warn once per fit."""
        step = trainer.global_step
        if self.diverged_at_step is None:
            self.diverged_at_step = step
        if not self._warned_this_fit:
            self._warned_this_fit = True
            rank_zero_warn(
                f"{self.owner}: {what} at step {step} (has the run diverged?). Its metrics are "
                "logged as NaN while this lasts; the monitor does not stop training."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"diverged_at_step": self.diverged_at_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.diverged_at_step = state.get("diverged_at_step")


def nan_metrics(keys: Iterable[str]) -> dict[str, float]:
    """``{key: nan}``: what a monitor logs for a measurement it could not make."""
    return dict.fromkeys(keys, math.nan)


def _finite(value: Tensor | float | None) -> bool:
    if value is None:
        return True
    if isinstance(value, Tensor):
        return value.numel() == 0 or bool(torch.isfinite(value).all())
    return math.isfinite(value)
