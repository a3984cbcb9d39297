"""What a finished ``lightning-dyn`` run left in its directory, read back without torch.

A run directory holds the composed config (``.hydra/config.yaml``), ``summary.json``, and what
its loggers wrote: an offline W&B run (``wandb/offline-run-*/``: the transaction log, media
files) and/or CSV metrics (``csv/version_*/metrics.csv``, media under ``.../media/``).
:func:`read_run_dir` gathers them into one :class:`RunRecord` for ``lightning-dyn report``.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_dyn._wandb_records import read_offline_run

# History columns that index a row rather than measure something.
_INDEX_KEYS = {"epoch", "step", "trainer/global_step"}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class RunRecord:
    """A run read back: config, summary, scalar curves and media files."""

    run_dir: Path
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    # metric name -> (steps, values), in logged order.
    curves: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    # image key -> (step, file) in logged order (W&B media, or the CSV logger's media/<key>/).
    images: dict[str, list[tuple[int, Path]]] = field(default_factory=dict)
    # (caption, columns, rows)
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def _add_point(record: RunRecord, key: str, step: float, value: Any) -> None:
    if key in _INDEX_KEYS or key.startswith("_") or isinstance(value, bool):
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        return
    steps, values = record.curves.setdefault(key, ([], []))
    steps.append(step)
    values.append(number if math.isfinite(number) else math.nan)


def _read_wandb(record: RunRecord, folder: Path) -> None:
    run = read_offline_run(folder)
    record.sources.append(f"W&B run {run.get('id', '?')} ({folder})")
    record.config = record.config or run["config"]
    record.name = run.get("name") or record.name
    for row in run["history"]:
        step = row.get("trainer/global_step", row.get("_step"))
        if step is None:
            continue
        media = _media_keys(row)
        for key, value in row.items():
            if not _is_media_part(key, media):
                _add_point(record, key, float(step), value)
    if not record.summary:  # no summary.json (a run of another program): W&B's last values
        for key, value in run["summary"].items():
            if not key.startswith("_") and not _is_media_part(key, _media_keys(run["summary"])):
                record.summary[key] = value
    media = folder / "files" / "media"
    # W&B names an image file <key>_<its step>_<hash>.png.
    for path in media.rglob("*"):
        named = re.fullmatch(r"(.+)_(\d+)_[0-9a-f]+", path.stem)
        if path.suffix in _IMAGE_SUFFIXES and named:
            _add_image(record, named[1], int(named[2]), path)
    for table in sorted(media.rglob("*.table.json")):
        content = json.loads(table.read_text())
        caption = str(table.relative_to(media))
        record.tables.append((caption, content.get("columns", []), content.get("data", [])))


def _add_image(record: RunRecord, key: str, step: int, path: Path) -> None:
    files = record.images.setdefault(key, [])
    files.append((step, path))
    files.sort()


def _media_keys(row: dict[str, Any]) -> set[str]:
    """Keys of a W&B row that hold media (an image's ``<key>/_type``, width, height, ...)."""
    return {key.rsplit("/", 1)[0] for key in row if key.endswith("/_type")}


def _is_media_part(key: str, media: set[str]) -> bool:
    return any(key == m or key.startswith(m + "/") for m in media)


def _read_csv(record: RunRecord, metrics: Path) -> None:
    record.sources.append(f"CSV {metrics}")
    from_wandb = set(record.curves)  # logger=[csv,wandb]: one curve per metric
    with metrics.open(newline="") as handle:
        for row in csv.DictReader(handle):
            step = row.get("step")
            if not step:
                continue
            for key, value in row.items():
                if value not in ("", None) and key not in from_wandb:
                    _add_point(record, key, float(step), value)
    media = metrics.parent / "media"
    # lightning_dyn.loggers writes media/<key>/step_<step>.png.
    for path in media.rglob("*"):
        named = re.fullmatch(r"step_(\d+)", path.stem)
        if path.suffix in _IMAGE_SUFFIXES and named:
            _add_image(record, str(path.parent.relative_to(media)), int(named[1]), path)
    for table in sorted(media.rglob("*.csv")):
        with table.open(newline="") as handle:
            rows = list(csv.reader(handle))
        if rows:
            record.tables.append((str(table.relative_to(media)), rows[0], rows[1:]))


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"optimizer.lr": 0.01, ...}``: dotted keys, leaves as values (an
    empty mapping is a leaf). How a run's config is logged and read back."""
    if not isinstance(node, Mapping) or not node:
        return {prefix[:-1]: node} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def _read_hydra_config(run_dir: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    # Unresolved: ${hydra:...} interpolations cannot be resolved outside the run.
    return flatten(OmegaConf.to_container(OmegaConf.load(path), resolve=False))


def read_run_dir(run_dir: str | Path) -> RunRecord:
    """Everything :mod:`lightning_dyn` and its loggers wrote to ``run_dir``.

    Raises ``FileNotFoundError`` when ``run_dir`` is not a directory or holds neither W&B nor
    CSV metrics.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir={str(run_dir)!r} is not a directory.")
    record = RunRecord(run_dir=run_dir, name=run_dir.name)
    summary = run_dir / "summary.json"
    if summary.is_file():
        record.summary.update(json.loads(summary.read_text()))
    for folder in sorted(run_dir.glob("wandb/*run-*")):
        if folder.is_dir() and any(folder.glob("run-*.wandb")):
            _read_wandb(record, folder)
    for metrics in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        _read_csv(record, metrics)
    if not record.sources:
        raise FileNotFoundError(
            f"run_dir={str(run_dir)!r} holds no W&B run (wandb/offline-run-*/run-*.wandb) and no "
            "CSV metrics (csv/version_*/metrics.csv): is it a lightning-dyn run directory "
            "(outputs/<name>/<time>)?"
        )
    record.config = record.config or _read_hydra_config(run_dir)
    for steps_values in record.curves.values():
        _sort_by_step(steps_values)
    return record


def _sort_by_step(steps_values: tuple[list[float], list[float]]) -> None:
    steps, values = steps_values
    order = sorted(range(len(steps)), key=steps.__getitem__)
    steps[:] = [steps[i] for i in order]
    values[:] = [values[i] for i in order]
