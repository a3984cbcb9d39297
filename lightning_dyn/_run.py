"""What ``lightning-dyn`` does once its config is composed and checked: build, fit, summarise.

Kept apart from :mod:`lightning_dyn.cli` so that the command answers ``--help``, an unknown
name or a mistyped key before torch and Lightning are imported.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lightning_dyn._progress import StepProgressBar
from lightning_dyn._run_records import flatten
from lightning_dyn.callbacks import ThresholdCrossing
from lightning_dyn.loggers import wandb_logger

# W&B keeps offline media staging and its cache under the user's home unless told otherwise;
# a run directory copied elsewhere would lose its tables. Set per job unless the user set them.
_WANDB_DIRS = {"WANDB_DATA_DIR": "data", "WANDB_CACHE_DIR": "cache", "WANDB_ARTIFACT_DIR": "files"}
_USER_WANDB_DIRS = {name for name in _WANDB_DIRS if name in os.environ}


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The recipe's callbacks, then the ``callbacks`` group's; a ``null`` entry switches one off."""
    specs: dict[str, Any] = {}
    for group in (cfg.recipe.get("callbacks"), cfg.get("callbacks")):
        specs.update(OmegaConf.to_container(group, resolve=True) if group else {})
    callbacks = [instantiate(spec) for spec in specs.values() if spec is not None]
    if cfg.get("checkpoint_every_n_steps"):
        callbacks.append(
            ModelCheckpoint(
                dirpath=Path(cfg.run_dir) / "checkpoints",
                save_last=True,
                save_top_k=0,
                every_n_train_steps=cfg.checkpoint_every_n_steps,
            )
        )
    return callbacks + progress_bar(cfg)


def progress_bar(cfg: DictConfig) -> list[pl.Callback]:
    """The step progress bar, unless ``trainer.enable_progress_bar=false``."""
    if not cfg.trainer.get("enable_progress_bar", True):
        return []
    return [StepProgressBar(refresh_rate=cfg.get("progress_refresh_rate", 10))]


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """``name``, ``group`` and ``tags`` of the run: the config's, with a sweep's job told apart.

    A job of a sweep (``-m``) is named ``<name>[<its overrides>]`` and grouped by the sweep's
    directory, so each sweep point is its own W&B run and the points of one sweep sit together.
    """
    name, group = cfg.name, cfg.get("group")
    tags = list(cfg.get("tags") or [])
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        if hydra.mode == RunMode.MULTIRUN:
            overrides = hydra.job.override_dirname
            name = f"{name}[{overrides}]" if overrides else f"{name}[{hydra.job.num}]"
            group = group or "/".join(Path(hydra.sweep.dir).parts[-2:])
    return {"name": name, "group": group, "tags": tags}


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """One logger per entry of the ``logger`` group (``logger=[csv,wandb]``: both).

    A ``WandbLogger`` left without ``name``, ``group`` or ``tags`` gets the run's
    (:func:`run_identity`); its offline media stay inside the run directory.
    """
    specs = cfg.get("logger") or {}
    loggers = []
    identity = run_identity(cfg)
    for spec in specs.values():
        if spec is None:
            continue
        if issubclass(get_class(spec._target_), WandbLogger):
            wandb_root = Path(cfg.run_dir) / "wandb"
            for variable, folder in _WANDB_DIRS.items():
                if variable not in _USER_WANDB_DIRS:
                    os.environ[variable] = str(wandb_root / folder)
            given = {k: v for k, v in identity.items() if spec.get(k) is None}
            loggers.append(instantiate(spec, **given))
        else:
            loggers.append(instantiate(spec))
    return loggers


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config, resolved and flattened to ``{"optimizer.lr": 0.01, ...}``."""
    return flatten(OmegaConf.to_container(cfg, resolve=True))


def build_module(cfg: DictConfig) -> pl.LightningModule:
    """The recipe's module; ``optimizer=`` only to a module whose constructor takes one."""
    optimizer_cfg = cfg.get("optimizer") or cfg.recipe.get("optimizer")
    module_cfg = cfg.recipe.module
    parameters = inspect.signature(get_class(module_cfg._target_)).parameters
    takes_optimizer = "optimizer" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )
    if not takes_optimizer:
        if cfg.get("optimizer"):
            raise ValueError(
                f"optimizer={cfg.optimizer._target_} was chosen, but {module_cfg._target_} "
                "takes no optimizer argument (its configure_optimizers decides): drop the "
                "optimizer override, or give the module an `optimizer` parameter."
            )
        return instantiate(module_cfg, _convert_="all")
    optimizer = instantiate(optimizer_cfg, _convert_="all") if optimizer_cfg else None
    return instantiate(module_cfg, optimizer=optimizer, _convert_="all")


def with_lr_scheduler(module: pl.LightningModule, make_scheduler: Any) -> None:
    """Make ``module.configure_optimizers`` return its optimizer with ``make_scheduler(it)``,
    stepped by Lightning after every optimizer step (checkpointed and resumed with it).

    Any module whose ``configure_optimizers`` returns one optimizer (or ``{"optimizer": ...}``)
    takes the ``lr_scheduler`` group this way, the recipes' and a user's alike.
    """
    name = type(module).__name__
    if not module.automatic_optimization:
        raise ValueError(
            f"lr_scheduler=... is stepped by Lightning's automatic optimisation, and {name} "
            "optimises manually (automatic_optimization=False): step a scheduler in its "
            "training_step, or leave lr_scheduler=null."
        )
    configure = module.configure_optimizers

    def configure_optimizers() -> dict[str, Any]:
        configured = configure()
        optimizer = configured
        if isinstance(configured, Mapping) and "lr_scheduler" not in configured:
            optimizer = configured.get("optimizer")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                f"lr_scheduler=... schedules one optimizer, but {name}.configure_optimizers "
                f"returned {type(configured).__name__}: return one optimizer, or leave "
                "lr_scheduler=null and configure the schedule in the module."
            )
        scheduler = make_scheduler(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
        }

    module.configure_optimizers = configure_optimizers


def build_parts(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    """The recipe's data module and module, the ``lr_scheduler`` choice attached."""
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.recipe.datamodule, _convert_="all")
    module = build_module(cfg)
    if cfg.get("lr_scheduler"):
        with_lr_scheduler(module, instantiate(cfg.lr_scheduler, _convert_="all"))
    return datamodule, module


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build everything from ``cfg``, fit, and return the summary shown at the end."""
    datamodule, module = build_parts(cfg)
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg)
    enable_checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        enable_checkpointing=enable_checkpointing,
    )
    run_config = flat_config(cfg)
    for logger in trainer.loggers:
        logger.log_hyperparams(run_config)
    try:
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        wall_time = time.perf_counter() - start
        return summarize(cfg, trainer, wall_time)
    finally:
        finish_wandb(trainer)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """``lightning-dyn eval``: validate (or, ``task=test``, test) ``cfg.ckpt_path``'s weights
    on the recipe's data, with its loggers; the recipe's training callbacks are left out."""
    datamodule, module = build_parts(cfg)
    loggers = build_loggers(cfg) or False
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=progress_bar(cfg), logger=loggers, enable_checkpointing=False
    )
    checkpoint = torch.load(cfg.ckpt_path, map_location="cpu", mmap=True, weights_only=False)
    try:
        start = time.perf_counter()
        stage = trainer.validate if cfg.task == "validate" else trainer.test
        (results, *_) = stage(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        wall_time = time.perf_counter() - start
    finally:
        finish_wandb(trainer)
    summary: dict[str, Any] = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "checkpoint step": checkpoint.get("global_step"),
        **{key: float(value) for key, value in sorted(results.items())},
        "wall time": f"{wall_time:.1f} s",
        "run dir": str(Path(cfg.run_dir).resolve()),
    }
    return summary


def finish_wandb(trainer: pl.Trainer) -> None:
    """End the W&B run, so that the next job of a sweep starts its own instead of reusing it."""
    if wandb_logger(trainer) is not None and trainer.is_global_zero:
        import wandb  # installed: a WandbLogger is attached

        if wandb.run is not None:
            wandb.finish()


def summarize(cfg: DictConfig, trainer: pl.Trainer, wall_time: float) -> dict[str, Any]:
    metrics = trainer.callback_metrics
    summary: dict[str, Any] = {"steps": trainer.global_step}
    for key in cfg.recipe.get("summary_metrics") or []:
        summary[key] = float(metrics[key]) if key in metrics else None
    for callback in trainer.callbacks:
        if isinstance(callback, ThresholdCrossing):
            passed = ">" if callback.mode == "max" else "<"
            label = f"first step {callback.monitor} {passed} {callback.threshold:g}"
            summary[label] = (
                callback.crossed_at_step if callback.crossed_at_step is not None else "never"
            )
    # Recipes and callbacks with a result worth a line of the table say so themselves.
    for part in (trainer.datamodule, *trainer.callbacks):
        if callable(getattr(part, "summarize", None)):
            summary.update(part.summarize(trainer))
    summary["wall time"] = f"{wall_time:.1f} s"
    summary["run dir"] = str(Path(cfg.run_dir).resolve())
    wandb = wandb_logger(trainer)
    if wandb is not None and trainer.is_global_zero:
        summary["wandb run"] = str(Path(wandb.experiment.dir).parent)
    return summary


@rank_zero_only
def print_summary(title: str, summary: dict[str, Any]) -> None:
    width = max(len(k) for k in summary)
    lines = [f"  {k:<{width}}  {_format(v)}" for k, v in summary.items()]
    rule = "-" * max(len(line) for line in [title, *lines])
    print("\n".join(["", rule, title, rule, *lines, rule]))


@rank_zero_only
def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """The summary table as JSON, for ``lightning-dyn report`` and scripts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def close_process_group() -> None:
    """Destroy the DDP process group that Lightning leaves open, all ranks together.

    Left to the interpreter's exit, gloo's threads can be destroyed while still joinable and
    abort a worker ("terminate called without an active exception") after a successful run.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def objective(cfg: DictConfig, summary: Mapping[str, Any]) -> float | None:
    """The summary's ``optimized_metric`` as a number, for a sweeper; None when none is set."""
    key = cfg.get("optimized_metric")
    if key is None:
        return None
    value = summary.get(key)
    if value == "never":  # a threshold never crossed: the run's length, the worst value
        return float(summary["steps"]) + 1.0
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"optimized_metric={key!r}: the summary holds {value!r}, not a number; summary "
            f"keys: {sorted(summary)}."
        ) from None


def run(cfg: DictConfig) -> float | None:
    """The ``lightning-dyn`` job: train, print the summary, close the process group.

    Returns the ``optimized_metric`` of the summary (what an Optuna sweep optimises), or None.
    """
    task = cfg.get("task", "fit")
    summary = train(cfg) if task == "fit" else evaluate(cfg)
    command = "lightning-dyn" if task == "fit" else f"lightning-dyn eval ({task})"
    title = f"{command}: recipe={cfg.recipe.name}"
    if cfg.name != cfg.recipe.name:
        title += f", experiment={cfg.name}"
    print_summary(title, summary)
    write_summary(Path(cfg.run_dir) / "summary.json", summary)
    close_process_group()
    return objective(cfg, summary)
