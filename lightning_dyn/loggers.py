"""Rich media (tables, images, figures): W&B media when a ``WandbLogger`` is attached, files
otherwise.

Scalars go through ``pl_module.log`` and reach every logger; only media needs this module. The
file fallback writes ``<run dir>/media/<key>/step_<step>.{csv,png}`` where the run dir is the
trainer's ``log_dir`` (the CSV or TensorBoard version directory) or ``default_root_dir``.
Every function acts on global rank 0 only and is a no-op elsewhere, so call any collective first.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from lightning_dyn._checks import check_positive_int

ImageLike = Image.Image | np.ndarray | torch.Tensor


def wandb_logger(trainer: pl.Trainer) -> WandbLogger | None:
    """The first ``WandbLogger`` attached to ``trainer``, if any."""
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def media_dir(trainer: pl.Trainer) -> Path:
    """Directory that receives media files when no ``WandbLogger`` is attached.

    The first logger's ``log_dir`` (or ``save_dir``), else ``default_root_dir``. Not
    ``trainer.log_dir``: that broadcasts from rank 0, a collective that would hang when only rank
    0 logs media.
    """
    for logger in trainer.loggers:
        root = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        if root:
            return Path(root) / "media"
    return Path(trainer.default_root_dir) / "media"


def _media_path(trainer: pl.Trainer, key: str, step: int, suffix: str) -> Path:
    safe_key = re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_") or "media"
    path = media_dir(trainer) / safe_key / f"step_{step:08d}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _step(trainer: pl.Trainer, step: int | None) -> int:
    return trainer.global_step if step is None else step


def to_pil(image: ImageLike) -> Image.Image:
    """A PIL image from a PIL image, an (H, W[, C]) uint8/float array or a (C, H, W) tensor.

    Float data must lie in [0, 1]; it is scaled to uint8.
    """
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            array = array.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        image = array.numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C); got shape {array.shape}.")
    if array.dtype != np.uint8:
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError("a float image must hold finite values in [0, 1].")
        array = (array * 255).round().astype(np.uint8)
    return Image.fromarray(array)


@rank_zero_only
def log_table(
    trainer: pl.Trainer,
    key: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    step: int | None = None,
) -> None:
    """Log a table: a ``wandb.Table`` under ``key``, or a CSV file.

    A cell may hold a PIL image: a ``wandb.Image`` in W&B; in the file fallback the image is
    saved next to the CSV (``step_<step>_r<row>_c<column>.png``) and the cell holds its name.
    """
    if any(len(row) != len(columns) for row in rows):
        raise ValueError(f"every row of table {key!r} must have {len(columns)} cells ({columns}).")
    step = _step(trainer, step)
    logger = wandb_logger(trainer)
    if logger is not None:
        import wandb

        data = [[wandb.Image(c) if isinstance(c, Image.Image) else c for c in r] for r in rows]
        logger.log_table(key=key, columns=list(columns), data=data, step=step)
        return
    path = _media_path(trainer, key, step, ".csv")
    cells = []
    for i, row in enumerate(rows):
        cells.append([])
        for j, cell in enumerate(row):
            if isinstance(cell, Image.Image):
                image_path = path.with_name(f"{path.stem}_r{i}_c{j}.png")
                cell.save(image_path)
                cell = image_path.name
            cells[-1].append(cell)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(cells)


def image_grid(images: torch.Tensor, columns: int = 8, min_side: int = 32) -> Image.Image:
    """One picture of a batch of images, each min-max scaled to [0, 1] on its own, 2 px apart.

    Args:
        images: ``(N, H, W)`` or ``(N, C, H, W)`` with ``C`` in 1 or 3, any real dtype.
        columns: images per row.
        min_side: small images are enlarged (nearest neighbour) to at least this many pixels.
    """
    check_positive_int("columns", columns)
    x = images.detach().cpu().float()
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W), C in (1, 3); got {x.shape}.")
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    span = (x.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-12)
    x = (x - low) / span
    scale = max(1, -(-min_side // min(x.shape[2:])))
    x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    n, c, h, w = x.shape
    cols = min(columns, n)
    rows = -(-n // cols)
    pad = 2
    # Mid-grey gaps: a white or black gap would merge with white or black image borders.
    grid = torch.full((c, rows * (h + pad) - pad, cols * (w + pad) - pad), 0.5)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = x[i]
    return to_pil(grid)


@rank_zero_only
def log_image(
    trainer: pl.Trainer,
    key: str,
    image: ImageLike,
    step: int | None = None,
    caption: str | None = None,
) -> None:
    """Log one image: a ``wandb.Image`` under ``key``, or a PNG file."""
    picture = to_pil(image)
    step = _step(trainer, step)
    logger = wandb_logger(trainer)
    if logger is not None:
        kwargs = {"caption": [caption]} if caption else {}
        logger.log_image(key=key, images=[picture], step=step, **kwargs)
        return
    picture.save(_media_path(trainer, key, step, ".png"))


def log_figure(
    trainer: pl.Trainer,
    key: str,
    figure: Any,
    step: int | None = None,
    close: bool = True,
) -> None:
    """Log a matplotlib figure as an image (rendered at its own dpi), then close it."""
    import matplotlib.pyplot as plt

    try:
        if trainer.is_global_zero:
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", bbox_inches="tight")
            buffer.seek(0)
            log_image(trainer, key, Image.open(buffer).convert("RGB"), step=step)
    finally:
        if close:
            plt.close(figure)
