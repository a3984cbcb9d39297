"""Checks of a composed ``lightning-dyn`` config that need neither torch nor Lightning.

They run before the heavy imports, so a mistyped key, a value of the wrong type or a missing
checkpoint answers in about a second, naming the key, with "did you mean" where it helps.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

_NONE = type(None)
# ``lightning.pytorch.Trainer``'s arguments and the config types each admits (``None``: not
# checked, objects). tests/test_cli_checks.py keeps the names equal to Trainer's signature.
TRAINER_ARGUMENTS: dict[str, tuple[type, ...] | None] = {
    "accelerator": (str,),
    "strategy": (str, dict),
    "devices": (int, str, list),
    "num_nodes": (int,),
    "precision": (int, str, _NONE),
    "logger": None,
    "callbacks": None,
    "fast_dev_run": (int, bool),
    "max_epochs": (int, _NONE),
    "min_epochs": (int, _NONE),
    "max_steps": (int,),
    "min_steps": (int, _NONE),
    "max_time": (str, dict, _NONE),
    "limit_train_batches": (float, int, _NONE),
    "limit_val_batches": (float, int, _NONE),
    "limit_test_batches": (float, int, _NONE),
    "limit_predict_batches": (float, int, _NONE),
    "overfit_batches": (int, float),
    "val_check_interval": (int, float, str, dict, _NONE),
    "check_val_every_n_epoch": (int, _NONE),
    "num_sanity_val_steps": (int, _NONE),
    "log_every_n_steps": (int, _NONE),
    "enable_checkpointing": (bool, _NONE),
    "enable_progress_bar": (bool, _NONE),
    "enable_model_summary": (bool, _NONE),
    "accumulate_grad_batches": (int,),
    "gradient_clip_val": (float, int, _NONE),
    "gradient_clip_algorithm": (str, _NONE),
    "deterministic": (bool, str, _NONE),
    "benchmark": (bool, _NONE),
    "inference_mode": (bool,),
    "use_distributed_sampler": (bool,),
    "profiler": (str, dict, _NONE),
    "detect_anomaly": (bool,),
    "barebones": (bool,),
    "plugins": None,
    "sync_batchnorm": (bool,),
    "reload_dataloaders_every_n_epochs": (int,),
    "default_root_dir": (str, _NONE),
    "enable_autolog_hparams": (bool,),
    "model_registry": (str, _NONE),
}
_TRAINER = "lightning.pytorch.Trainer"


def _did_you_mean(name: str, choices: list[str], prefix: str = "") -> str:
    close = [prefix + c for c in difflib.get_close_matches(name, choices, n=3)]
    return f"; did you mean {' or '.join(close)}?" if close else "."


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is _NONE else t.__name__ for t in types)


def trainer_errors(trainer: dict[str, Any]) -> list[str]:
    """Unknown keys and ill-typed values of a ``lightning.pytorch.Trainer`` config node."""
    errors = []
    for key, value in trainer.items():
        if key.startswith("_"):
            continue
        if key not in TRAINER_ARGUMENTS:
            hint = _did_you_mean(key, list(TRAINER_ARGUMENTS), "trainer.")
            errors.append(f"trainer.{key} is not an argument of {_TRAINER}{hint}")
            continue
        types = TRAINER_ARGUMENTS[key]
        # bool is an int in Python; a flag given where a count is wanted is still a mistake.
        wrong_bool = isinstance(value, bool) and bool not in (types or (bool,))
        if types is not None and (not isinstance(value, types) or wrong_bool):
            errors.append(
                f"trainer.{key}={value!r} has type {type(value).__name__}; {_TRAINER} takes "
                f"{key} as {_type_names(types)}."
            )
    return errors


def trainer_override_error(argv: list[str]) -> str | None:
    """An unknown ``trainer.<key>=`` override, with the closest Trainer arguments, else None.

    Hydra itself only says the key "is not in struct". The packaged trainer configs all build a
    ``lightning.pytorch.Trainer``; with ``--config-dir`` a trainer of the user's own may take
    other arguments, so the check is left to the composed config (:func:`config_errors`).
    """
    if any(a.startswith(("--config-dir", "-cd")) for a in argv):
        return None
    for arg in argv:
        match = re.fullmatch(r"\+{0,2}trainer\.(\w+)=.*", arg)
        if match and match[1] not in TRAINER_ARGUMENTS:
            hint = _did_you_mean(match[1], list(TRAINER_ARGUMENTS), "trainer.")
            return f"trainer.{match[1]} is not an argument of {_TRAINER}{hint}"
    return None


def config_errors(cfg: DictConfig) -> list[str]:
    """What is wrong with ``cfg`` that can be told without importing torch."""
    errors: list[str] = []
    trainer = cfg.get("trainer")
    if trainer is not None and trainer.get("_target_") == _TRAINER:
        errors += trainer_errors(OmegaConf.to_container(trainer, resolve=True))
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        where = Path(ckpt_path).resolve()
        errors.append(f"ckpt_path={ckpt_path!r}: no such file ({where}); nothing was set up.")
    errors += _objective_errors(cfg)
    errors += _task_errors(cfg)
    return errors


def _task_errors(cfg: DictConfig) -> list[str]:
    """``task`` is one of fit / validate / test; evaluating needs a checkpoint; a schedule needs
    a length."""
    errors = []
    task, tasks = cfg.get("task", "fit"), ["fit", "validate", "test"]
    if task not in tasks:
        hint = _did_you_mean(str(task), tasks)
        errors.append(f"task={task!r}: must be fit, validate or test{hint}")
    elif task != "fit" and cfg.get("ckpt_path") is None:
        errors.append(
            f"task={task} evaluates a checkpoint: give ckpt_path=<run dir>/checkpoints/last.ckpt "
            "(lightning-dyn eval ckpt_path=...)."
        )
    scheduler = cfg.get("lr_scheduler")
    if scheduler is not None and "total_steps" in scheduler:
        total = scheduler.total_steps
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            errors.append(
                f"lr_scheduler.total_steps={total!r}: the schedule decays over a fixed number of "
                "optimizer steps; set trainer.max_steps (it follows it) or "
                "lr_scheduler.total_steps."
            )
        elif scheduler.get("warmup_steps", 0) >= total:
            errors.append(
                f"lr_scheduler.warmup_steps={scheduler.warmup_steps} must be below its "
                f"total_steps={total} (trainer.max_steps): lower it, or run longer."
            )
    return errors


def _objective_errors(cfg: DictConfig) -> list[str]:
    """``optimized_metric`` must be a summary line the recipe is known to print."""
    key = cfg.get("optimized_metric")
    recipe = cfg.get("recipe") or {}
    known = list(recipe.get("summary_metrics") or [])
    if key is None or not known or key in known or key.startswith("first step "):
        return []  # a recipe that lists no summary metrics may print its own lines
    return [
        f"optimized_metric={key!r} is not among recipe.summary_metrics {known} (nor a "
        f"'first step <metric> > <threshold>' line){_did_you_mean(key, known)}"
    ]
