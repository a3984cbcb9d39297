"""``lightning-dyn``: train a bundled recipe from the hydra configs in ``lightning_dyn/configs``.

Run ``lightning-dyn --help`` for the config groups and ``lightning-dyn --cfg job`` to print the
composed config without training.
"""

from __future__ import annotations

import itertools
import re
import sys
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lightning_dyn._progress import StepProgressBar
from lightning_dyn.callbacks import ThresholdCrossing
from lightning_dyn.loggers import wandb_logger


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
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(StepProgressBar(refresh_rate=cfg.get("progress_refresh_rate", 10)))
    return callbacks


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build everything from ``cfg``, fit, and return the summary shown at the end."""
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.recipe.datamodule, _convert_="all")
    # The optimizer group (optimizer=<name>) if chosen, else the recipe's own.
    optimizer_cfg = cfg.get("optimizer") or cfg.recipe.get("optimizer")
    optimizer = instantiate(optimizer_cfg, _convert_="all") if optimizer_cfg else None
    module = instantiate(cfg.recipe.module, optimizer=optimizer, _convert_="all")
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    callbacks = build_callbacks(cfg)
    enable_checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=logger, enable_checkpointing=enable_checkpointing
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    wall_time = time.perf_counter() - start
    return summarize(cfg, trainer, wall_time)


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


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _group_options(group: str, config_dirs: list[str]) -> set[str]:
    packaged = files("lightning_dyn.configs") / group
    names = {f.name for f in packaged.iterdir()} if packaged.is_dir() else set()
    for directory in config_dirs:
        folder = Path(directory) / group
        names |= {f.name for f in folder.iterdir()} if folder.is_dir() else set()
    return {n.removesuffix(".yaml") for n in names if n.endswith(".yaml")}


def check_list_overrides(argv: list[str]) -> str | None:
    """An error for unknown names in a list override such as ``callbacks=[a,b]``, else None.

    Hydra lists the valid options for ``group=name`` but not for ``group=[a,b]``.
    """
    config_dirs = [v for k, v in itertools.pairwise(argv) if k in ("--config-dir", "-cd")]
    config_dirs += [a.split("=", 1)[1] for a in argv if a.startswith("--config-dir=")]
    for arg in argv:
        match = re.fullmatch(r"\+{0,2}(\w+)=\[(.*)\]", arg)
        if not match:
            continue
        group, names = match[1], [n.strip() for n in match[2].split(",") if n.strip()]
        options = _group_options(group, config_dirs)
        unknown = [n for n in names if n not in options]
        if options and unknown:
            listing = "".join(f"\n\t{o}" for o in sorted(options))
            return (
                f"Could not find {unknown} in '{group}'.\nAvailable options in '{group}':{listing}"
            )
    return None


@hydra.main(version_base="1.3", config_path="pkg://lightning_dyn.configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    summary = train(cfg)
    print_summary(f"lightning-dyn: recipe={cfg.recipe.name}", summary)
    close_process_group()


def close_process_group() -> None:
    """Destroy the DDP process group that Lightning leaves open, all ranks together.

    Left to the interpreter's exit, gloo's threads can be destroyed while still joinable and
    abort a worker ("terminate called without an active exception") after a successful run.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main() -> None:
    """Console entry point: ``lightning-dyn [hydra overrides]``."""
    error = check_list_overrides(sys.argv[1:])
    if error:
        sys.exit(error)
    _hydra_main()


if __name__ == "__main__":
    main()
