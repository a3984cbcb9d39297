"""Draw logged metrics as one figure of panels, logged as an image every N steps and at the end."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from lightning_dyn._checks import check_positive_int
from lightning_dyn.loggers import log_figure


def _check_panels(panels: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(panels, Mapping) or not panels:
        raise ValueError(
            "panels must be a non-empty mapping of panel title -> metric keys or glob patterns, "
            f"e.g. {{'accuracy': ['train/acc', 'test/acc']}}; got {panels!r}."
        )
    checked = {}
    for title, keys in panels.items():
        if isinstance(keys, str) or not isinstance(keys, Sequence) or not keys:
            raise ValueError(
                f"panels[{title!r}] must be a non-empty list of metric keys or glob patterns "
                f"(e.g. ['perp_grad/cos_w_g/*']); got {keys!r}."
            )
        if not all(isinstance(k, str) and k for k in keys):
            raise ValueError(f"panels[{title!r}] holds a key that is not a string: {keys!r}.")
        checked[str(title)] = tuple(keys)
    return checked


class MetricCurves(pl.Callback):
    """Keeps the history of the metrics named in ``panels`` and logs them as one figure.

    The scalars reach every logger already; this gives the picture a run is about (grokking:
    train and test accuracy against the step, the Softmax-Collapse fraction below) as an image
    in W&B, or a PNG under the logger's ``media/`` folder, without a W&B workspace to set up.

    Values are read from ``trainer.callback_metrics`` after each optimizer step and after each
    validation (reduced across ranks by then), skipping the sanity check. ``callback_metrics``
    holds a value until it is logged again, so a point is recorded when the value changes and
    the line is drawn on to the last step it was seen at: a metric measured every 10 steps has
    one point per measurement, a validation metric is not recorded again at the next training
    step. Past ``max_points`` points a series keeps every other one.
    The figure is logged every ``every_n_steps`` optimizer steps and when training ends, on
    global rank 0. The history is checkpointed, so a resumed run draws the whole run; one
    gap is Lightning's: a checkpoint written after a training step (``ModelCheckpoint(
    every_n_train_steps=...)``) comes before that step's validation, which the resumed run
    does not run again, so the validation curves hold the previous value at that step.

    Args:
        panels: panel title -> metric keys or ``fnmatch`` patterns (``"perp_grad/cos_w_g/*"``
            draws one line per layer). A panel whose keys were never logged is left out.
        every_n_steps: log the figure at these optimizer steps (and at the end).
        key: the image's key in the logger.
        max_points: the most points kept per metric.
    """

    def __init__(
        self,
        panels: Mapping[str, Sequence[str]],
        every_n_steps: int = 500,
        key: str = "curves",
        max_points: int = 2000,
    ):
        self.panels = _check_panels(panels)
        check_positive_int("every_n_steps", every_n_steps)
        check_positive_int("max_points", max_points)
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string; got {key!r}.")
        self.every_n_steps, self.key, self.max_points = every_n_steps, key, max_points
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.last_seen: dict[str, int] = {}
        self._drawn_at = -1

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(key=self.key)

    def _matches(self, name: str, patterns: Sequence[str] | None = None) -> bool:
        patterns = patterns or [p for keys in self.panels.values() for p in keys]
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    def _record(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking:
            return
        step = trainer.global_step
        for name, value in trainer.callback_metrics.items():
            if not self._matches(name) or getattr(value, "numel", lambda: 1)() != 1:
                continue
            number, series = float(value), self.history.setdefault(name, [])
            held = series and (series[-1][1] == number or math.isnan(series[-1][1] + number))
            if not held:
                if series and series[-1][0] == step:  # accumulation; validation after training
                    series[-1] = (step, number)
                else:
                    series.append((step, number))
            self.last_seen[name] = step
            if len(series) > self.max_points:  # a long run: every other point, the last kept
                series[:] = [*series[-2::-2][::-1], series[-1]]

    def _drawn(self, name: str) -> list[tuple[int, float]]:
        series = self.history[name]
        last_seen = self.last_seen.get(name, series[-1][0])
        return [*series, (last_seen, series[-1][1])] if last_seen > series[-1][0] else series

    def figure(self) -> Any:
        """The figure of the history so far (a matplotlib ``Figure``), or None when nothing
        named in ``panels`` was logged yet."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        shown = {}
        for title, patterns in self.panels.items():
            names = sorted(
                n for n in self.history if any(fnmatch.fnmatchcase(n, p) for p in patterns)
            )
            if names:
                shown[title] = names
        if not shown:
            return None
        figure, axes = plt.subplots(
            len(shown), 1, figsize=(6.4, 2.6 * len(shown)), sharex=True, squeeze=False
        )
        for axis, (title, names) in zip(axes[:, 0], shown.items(), strict=True):
            for name in names:
                steps, values = zip(*self._drawn(name), strict=True)
                axis.plot(steps, values, "-" if len(steps) > 2 else "o-", label=name)
            axis.set_title(title)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7, loc="best")
        axes[-1, 0].set_xlabel("optimizer step")
        figure.tight_layout()
        return figure

    def _log(self, trainer: pl.Trainer) -> None:
        if trainer.global_step == self._drawn_at:
            return
        self._drawn_at = trainer.global_step
        if not trainer.is_global_zero:
            return
        figure = self.figure()
        if figure is not None:
            log_figure(trainer, self.key, figure, step=trainer.global_step)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._record(trainer)
        if trainer.global_step > 0 and trainer.global_step % self.every_n_steps == 0:
            self._log(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        history = {k: list(v) for k, v in self.history.items()}
        return {"history": history, "last_seen": dict(self.last_seen)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: [tuple(p) for p in v] for k, v in state_dict["history"].items()}
        self.last_seen = dict(state_dict["last_seen"])
