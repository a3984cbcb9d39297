"""What the user sees of a detected opposing pair: a table with its examples and a figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from lightning_dyn.callbacks._probe import Probe
from lightning_dyn.loggers import image_grid, log_figure, log_table

TABLE_COLUMNS = (
    "step",
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


def loss_figure(record: Mapping[str, Any]) -> Any:
    """The two groups' mean probe losses over the window that ended in the detection."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3), dpi=100)
    for name, losses in zip(record["groups"], record["losses"], strict=True):
        axes.plot(record["steps"], losses, marker="o", label=name)
    axes.axvline(record["step"], color="grey", linestyle=":", label="detection")
    axes.set(xlabel="optimizer step", ylabel="mean probe loss")
    axes.set_title(
        f"corr {record['pair_corr']:.2f}, grad cos {record['pair_grad_cos']:.2f}", fontsize=9
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def log_detection(
    trainer: pl.Trainer, probe: Probe, records: Sequence[Mapping[str, Any]], limit: int
) -> None:
    """Log the table of flagged pairs and the loss figure of the first (global rank 0 only)."""
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
    log_figure(trainer, "opposing/loss_curves", loss_figure(records[0]), step=step)
