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

from lightning_dyn.loggers import (
    image_grid,
    log_figure,
    log_image,
    log_table,
    media_dir,
    to_pil,
)

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


# --- image_grid -------------------------------------------------------------------------------


def _scaled(image: np.ndarray) -> np.ndarray:
    """One image min-max scaled on its own to uint8 (float64 reference)."""
    span = image.max() - image.min()
    return np.round(255 * (image - image.min()) / span).astype(np.uint8)


def _reference_grid(images: np.ndarray, columns: int, scale: int, pad: int = 2) -> np.ndarray:
    """``(C, H, W)`` uint8 grid: nearest-neighbour enlarged tiles on a mid-grey background."""
    n, c, h, w = images.shape
    h, w = h * scale, w * scale
    cols = min(columns, n)
    rows = -(-n // cols)
    grid = np.full((c, rows * (h + pad) - pad, cols * (w + pad) - pad), 128, dtype=np.uint8)
    for i in range(n):
        tile = np.kron(_scaled(images[i]), np.ones((1, scale, scale), dtype=np.uint8))
        r, q = i // cols, i % cols
        grid[:, r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = tile
    return grid


def test_image_grid_single_channel_layout_and_pixels() -> None:
    base = np.arange(6, dtype=np.float64).reshape(2, 3)
    # Different ranges and signs: each image is scaled on its own.
    images = np.stack([base, 10 * base + 100, -base, base[::-1] * 0.01])
    grid = image_grid(torch.from_numpy(images), columns=3, min_side=4)
    assert grid.mode == "L"
    # scale = ceil(4 / 2) = 2: tiles 4 x 6; 2 rows of 3 columns, 2-pixel gaps.
    assert grid.size == (3 * 6 + 2 * 2, 2 * 4 + 2)
    expected = _reference_grid(images[:, None], columns=3, scale=2)[0]
    np.testing.assert_array_equal(np.asarray(grid), expected)
    assert np.asarray(grid)[0, :6].tolist() == [0, 0, 51, 51, 102, 102]  # enlarged, not blurred


def test_image_grid_rgb_scales_each_image_over_all_its_channels() -> None:
    images = torch.randint(0, 256, (3, 3, 5, 7), generator=torch.Generator().manual_seed(0))
    grid = image_grid(images, columns=8, min_side=7)  # scale = ceil(7 / 5) = 2
    assert grid.mode == "RGB" and grid.size == (3 * 14 + 2 * 2, 10)
    expected = _reference_grid(images.double().numpy(), columns=8, scale=2)
    np.testing.assert_array_equal(np.asarray(grid), expected.transpose(1, 2, 0))


def test_image_grid_keeps_large_images_and_one_channel_matches_no_channel() -> None:
    images = torch.rand(5, 40, 33, generator=torch.Generator().manual_seed(0))
    grid = image_grid(images, columns=2, min_side=32)
    assert grid.size == (2 * 33 + 2, 3 * 40 + 2 * 2)  # no enlargement, 3 rows
    np.testing.assert_array_equal(np.asarray(grid), np.asarray(image_grid(images[:, None], 2)))
    flat = image_grid(torch.full((1, 4, 4), 7.0), min_side=4)  # constant: no division by 0
    assert np.asarray(flat).tolist() == [[0] * 4] * 4


@pytest.mark.parametrize("shape", [(4, 5), (2, 2, 4, 5), (2, 4, 4, 5), (0, 4, 5), (1, 1, 1, 4, 5)])
def test_image_grid_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"images must be \(N, H, W\) or \(N, C, H, W\)"):
        image_grid(torch.zeros(shape))


@pytest.mark.parametrize("columns", [0, -1, 2.5])
def test_image_grid_rejects_bad_columns(columns: object) -> None:
    with pytest.raises(ValueError, match=r"columns must be an integer >= 1"):
        image_grid(torch.rand(3, 4, 4), columns=columns)  # type: ignore[arg-type]


# --- tables with image cells ------------------------------------------------------------------


def _picture() -> Image.Image:
    return Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)


def test_table_image_cell_is_a_png_next_to_the_csv(tmp_path: Path) -> None:
    trainer = pl.Trainer(logger=False, default_root_dir=tmp_path)
    picture = _picture()
    log_table(trainer, "diag/examples", ["name", "image"], [["a", picture], ["b", 3]], step=5)
    folder = media_dir(trainer) / "diag_examples"
    with (folder / "step_00000005.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows == [["name", "image"], ["a", "step_00000005_r0_c1.png"], ["b", "3"]]
    saved = Image.open(folder / rows[1][1])
    np.testing.assert_array_equal(np.asarray(saved), np.asarray(picture))
    assert sorted(p.name for p in folder.iterdir()) == [
        "step_00000005.csv",
        "step_00000005_r0_c1.png",
    ]


def test_table_image_cell_goes_to_the_offline_wandb_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="lightning-dyn-tests", save_dir=str(tmp_path), offline=True)
    import wandb

    sent = []
    original = logger.log_table

    def spy(**kwargs) -> None:
        sent.append(kwargs["data"])
        original(**kwargs)

    monkeypatch.setattr(logger, "log_table", spy)
    trainer = pl.Trainer(logger=logger, default_root_dir=tmp_path, enable_progress_bar=False)
    log_table(trainer, "diag/examples", ["name", "image"], [["a", _picture()]], step=0)
    run_files = Path(logger.experiment.dir)
    summary = dict(logger.experiment.summary)["diag/examples"]
    logger.experiment.finish()
    [[[name, cell]]] = sent
    assert name == "a" and isinstance(cell, wandb.Image)
    assert (summary["_type"], summary["nrows"], summary["ncols"]) == ("table-file", 1, 2)
    # The run-level copy names the media type; the image itself goes to the run_table artifact.
    tables = list((run_files / "media" / "table" / "diag").glob("examples_*.table.json"))
    assert len(tables) == 1
    assert [row[0] for row in json.loads(tables[0].read_text())["data"]] == ["a"]
    assert not (tmp_path / "media").exists()
