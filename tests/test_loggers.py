"""Rich media goes to W&B when a WandbLogger is attached and to files otherwise."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import matplotlib
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from PIL import Image

from lightning_dyn.loggers import log_figure, log_image, log_table, media_dir, to_pil

matplotlib.use("Agg")


class _MediaCallback(pl.Callback):
    """Logs one of each media kind at the end of training, as a diagnostics callback would."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import matplotlib.pyplot as plt

        log_table(trainer, "diag/table", ["step", "value"], [[0, 1.5], [1, 2.5]])
        log_image(trainer, "diag/image", torch.rand(3, 8, 12))
        figure, axis = plt.subplots(figsize=(2, 2), dpi=50)
        axis.plot([0, 1], [1, 0])
        log_figure(trainer, "diag/figure", figure)


def _fit_with(logger, tmp_path: Path) -> pl.Trainer:
    from harness import TINY_DATA, TINY_MODULE

    from lightning_dyn.recipes import ModularArithmeticDataModule, ModularArithmeticModule

    trainer = pl.Trainer(
        max_steps=1,
        logger=logger,
        callbacks=[_MediaCallback()],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(ModularArithmeticModule(**TINY_MODULE), ModularArithmeticDataModule(**TINY_DATA))
    return trainer


def test_without_wandb_media_are_files_in_the_run_dir(tmp_path: Path) -> None:
    trainer = _fit_with(CSVLogger(tmp_path, name="csv"), tmp_path)
    root = media_dir(trainer)
    assert root == Path(trainer.logger.log_dir) / "media"
    with (root / "diag_table" / "step_00000001.csv").open() as f:
        assert list(csv.reader(f)) == [["step", "value"], ["0", "1.5"], ["1", "2.5"]]
    assert Image.open(root / "diag_image" / "step_00000001.png").size == (12, 8)
    assert Image.open(root / "diag_figure" / "step_00000001.png").mode == "RGB"


def test_with_wandb_media_go_to_the_offline_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="lightning-dyn-tests", save_dir=str(tmp_path), offline=True)
    trainer = _fit_with(logger, tmp_path)
    run_files = Path(logger.experiment.dir)
    logger.experiment.finish()
    media = run_files / "media"
    tables = list((media / "table" / "diag").glob("table_*.table.json"))
    assert len(tables) == 1
    assert json.loads(tables[0].read_text())["data"] == [[0, 1.5], [1, 2.5]]
    assert len(list((media / "images" / "diag").glob("image_*.png"))) == 1
    assert len(list((media / "images" / "diag").glob("figure_*.png"))) == 1
    assert not (Path(trainer.default_root_dir) / "media").exists()


def test_to_pil_accepts_the_usual_layouts_and_rejects_the_rest() -> None:
    assert to_pil(torch.zeros(3, 4, 5)).size == (5, 4)
    assert to_pil(np.zeros((4, 5), dtype=np.uint8)).size == (5, 4)
    assert to_pil(np.ones((4, 5, 1))).mode == "L"
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, C\); got shape \(2, 3, 4, 5\)"):
        to_pil(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match=r"finite values in \[0, 1\]"):
        to_pil(np.full((2, 2), 3.0))


def test_table_rows_must_match_the_columns(tmp_path: Path) -> None:
    trainer = pl.Trainer(logger=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="every row of table 't' must have 2 cells"):
        log_table(trainer, "t", ["a", "b"], [[1, 2, 3]])
