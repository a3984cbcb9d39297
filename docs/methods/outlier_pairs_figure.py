"""Draws ``outlier_pairs.png`` (what OutlierPairDetector shows on the opposing_signals recipe)
and ``outlier_pairs_window.png`` (the loss figure the detector logs, for its first report).

    python docs/methods/outlier_pairs_figure.py   # about 10 s on 2 CPU cores

Top: the mean probe loss of the two planted subsets and of the clean examples (the recipe knows
which are which; the detector does not), with the steps at which a pair was flagged. Middle: the
detector's own logged scalars. Bottom: the examples of the first flagged pair, as in its table.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import matplotlib
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lightning_dyn.callbacks import OutlierPairDetector
from lightning_dyn.callbacks._outlier_report import loss_figure
from lightning_dyn.loggers import image_grid
from lightning_dyn.recipes import OpposingSignalsDataModule, OpposingSignalsModule

STEPS = 400


class Trace(pl.Callback):
    """Per step: the planted groups' mean losses, read from the detector's buffer."""

    def __init__(self, detector: OutlierPairDetector, data: OpposingSignalsDataModule) -> None:
        self.detector, self.data = detector, data
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        losses = self.detector._ordered()[0][-1]  # the evaluation of this step, probe order
        index = self.detector._probe.indices
        a = torch.isin(index, self.data.planted_a)
        b = torch.isin(index, self.data.planted_b)
        row = {
            "step": trainer.global_step,
            "A": float(losses[a].mean()),
            "B": float(losses[b].mean()),
            "clean": float(losses[~(a | b)].mean()),
        }
        self.rows.append(row)


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        draw(root)


def draw(root: str) -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pl.seed_everything(0, verbose=False)
    data = OpposingSignalsDataModule(seed=0)
    detector = OutlierPairDetector(k=32, max_detections=100_000)
    trace = Trace(detector, data)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=STEPS,
        logger=CSVLogger(root, name="figure"),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[detector, trace],
    )
    trainer.fit(OpposingSignalsModule(), datamodule=data)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        logged = {int(r["step"]): r for r in csv.DictReader(f)}

    rows = trace.rows
    steps = [r["step"] for r in rows]
    figure = plt.figure(figsize=(9, 7.5), dpi=110)
    grid = figure.add_gridspec(3, 2, height_ratios=[1.2, 1.0, 0.45])
    top = figure.add_subplot(grid[0, :])
    for key, label in (("A", "planted, class 0"), ("B", "planted, class 1"), ("clean", "clean")):
        top.plot(steps, [r[key] for r in rows], label=label, linewidth=1)
    flagged = sorted({r["step"] for r in detector.detections})
    top.plot(flagged, [0.02] * len(flagged), "|", color="black", label="pair flagged")
    top.set(ylabel="mean probe loss", title="opposing_signals recipe, seed 0 (full-batch GD)")
    top.legend(fontsize=8, ncols=4, loc="upper right")

    middle = figure.add_subplot(grid[1, :])
    for key, style in (("pair_corr", "-"), ("pair_grad_cos", ".")):
        points = [
            (s, float(r[f"opposing/{key}"])) for s, r in logged.items() if r[f"opposing/{key}"]
        ]
        middle.plot(
            *zip(*points, strict=True), style, markersize=2, linewidth=1, label=f"opposing/{key}"
        )
    middle.axhline(-0.8, color="grey", linestyle=":", label="-cos_threshold")
    middle.set(xlabel="optimizer step", ylabel="logged value", ylim=(-1.05, 1.05))
    middle.legend(fontsize=8, ncols=3, loc="upper right")

    first = detector.detections[0]
    for column, (name, positions) in enumerate(
        zip(first["groups"], first["positions"], strict=True)
    ):
        axes = figure.add_subplot(grid[2, column])
        images = data.train_set.tensors[0][detector._probe.indices[positions[:8]]]
        # A grey frame: the patch is white and would merge with the page.
        picture = np.pad(np.asarray(image_grid(images)), 2, constant_values=128)
        axes.imshow(picture, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes.set_title(f"step {first['step']}: {name} ({len(positions)} examples)", fontsize=8)
        axes.axis("off")
    figure.tight_layout()
    out = Path(__file__).with_name("outlier_pairs.png")
    figure.savefig(out)
    loss_figure(first).savefig(out.with_name("outlier_pairs_window.png"))
    print(f"wrote {out}; first flag at step {first['step']}, {len(detector.detections)} flags")


if __name__ == "__main__":
    main()
