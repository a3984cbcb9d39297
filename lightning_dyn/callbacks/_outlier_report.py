"""What the user sees of a detected opposing pair: a table with its examples and a figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_dyn.callbacks._probe import Probe
from lightning_dyn.functional.opposing_groups import OpposingGroup, pair_series
from lightning_dyn.functional.pair_search import antiphase_matrix
from lightning_dyn.loggers import image_grid, log_figure, log_table

TABLE_COLUMNS = (
    "step",
    "first_step",
    "persistence",
    "pair",
    "group",
    "size",
    "pair_corr",
    "pair_grad_cos",
    "first_indices",
    "examples",
)


def _inputs(batch: Any) -> Any:
    """The model inputs of a batch: its first element (or the batch itself)."""
    if isinstance(batch, Mapping):
        return next(iter(batch.values()))
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def _looks_like_images(x: Any) -> bool:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        return False
    return (x.ndim == 3 and min(x.shape[1:]) >= 4) or (x.ndim == 4 and x.shape[1] in (1, 3))


def examples_cell(probe: Probe, positions: Tensor, loader: Any, limit: int) -> Any:
    """A picture of the first ``limit`` examples of a group, or their raw rows as text."""
    if limit == 0 or positions.numel() == 0:
        return ""
    inputs = _inputs(probe.examples(positions[:limit], loader))
    if _looks_like_images(inputs):
        return image_grid(inputs)
    if isinstance(inputs, Tensor):
        rows = inputs.reshape(inputs.shape[0], -1)[:, :8].tolist()
        return "; ".join(" ".join(f"{v:.3g}" for v in row) for row in rows)
    return repr(inputs)[:200]


def _detrended(steps: Sequence[float], values: Sequence[float]) -> list[float]:
    """``values`` minus their least-squares line over ``steps``."""
    x = torch.tensor(steps, dtype=torch.float64)
    y = torch.tensor(values, dtype=torch.float64)
    design = torch.stack([torch.ones_like(x), x - x.mean()], dim=1)
    coefficients = torch.linalg.lstsq(design, y[:, None]).solution
    return (y - (design @ coefficients)[:, 0]).tolist()


def loss_figure(record: Mapping[str, Any]) -> Any:
    """The two sides' mean probe losses over the window of the report, each minus its own linear
    trend over the window: the sides' levels can differ by orders of magnitude and the common
    descent can hide a small swing; their antiphase swing is what matters, and on a shared
    scale around zero it is visible (the mean levels are in the legend)."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3), dpi=100)
    for name, losses, marker in zip(record["groups"], record["losses"], "os", strict=True):
        mean = sum(losses) / len(losses)
        axes.plot(
            record["steps"],
            _detrended(record["steps"], losses),
            marker=marker,
            label=f"{name} (mean {mean:.3g})",
        )
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.axvline(record["step"], color="grey", linestyle=":", label="report")
    axes.set(xlabel="optimizer step", ylabel="mean probe loss - linear trend")
    title = f"corr {record['pair_corr']:.2f}, grad cos {record['pair_grad_cos']:.2f}"
    if "first_step" in record:
        title += f", tracked since step {record['first_step']}"
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def pair_record(
    probe: Probe,
    step: int,
    names: tuple[str, str],
    sides: tuple[Tensor, Tensor],
    steps: Tensor,
    window: Tensor,
    cos: float,
    group: OpposingGroup | None = None,
) -> dict[str, Any]:
    """What a table row and the loss figure show of two sides (a fragment or a tracked group)."""
    series = pair_series(window, *sides)
    record = {
        "step": step,
        "groups": names,
        "pair_corr": float(antiphase_matrix(series)[0, 1]),
        "pair_grad_cos": cos,
        "positions": tuple(m.nonzero().flatten() for m in sides),
        "indices": tuple(probe.indices[m].tolist() for m in sides),
        "steps": steps.tolist(),
        "losses": (series[:, 0].tolist(), series[:, 1].tolist()),
    }
    if group is not None:
        record.update(first_step=group.first_step, persistence=group.persistence)
    return record


def log_detection(
    trainer: pl.Trainer, probe: Probe, records: Sequence[Mapping[str, Any]], limit: int
) -> None:
    """Log the table of the tracked groups and the loss figure of the largest (rank 0 only)."""
    if not trainer.is_global_zero:
        return
    loader = trainer.train_dataloader
    rows = []
    for number, record in enumerate(records):
        for name, positions, indices in zip(
            record["groups"], record["positions"], record["indices"], strict=True
        ):
            rows.append(
                [
                    record["step"],
                    record.get("first_step", record["step"]),
                    record.get("persistence", 1),
                    number,
                    name,
                    len(indices),
                    round(record["pair_corr"], 4),
                    round(record["pair_grad_cos"], 4),
                    " ".join(str(i) for i in indices[:16]),
                    examples_cell(probe, positions, loader, limit),
                ]
            )
    step = records[0]["step"]
    log_table(trainer, "opposing/pairs", TABLE_COLUMNS, rows, step=step)
    largest = max(records, key=lambda r: sum(len(side) for side in r["indices"]))
    log_figure(trainer, "opposing/loss_curves", loss_figure(largest), step=step)
