"""``lightning-dyn``: train a bundled recipe from the hydra configs in ``lightning_dyn/configs``.

Run ``lightning-dyn --help`` for the config groups and ``lightning-dyn --cfg job`` to print the
composed config without training; ``lightning-dyn eval ckpt_path=...`` validates a checkpoint
and ``lightning-dyn report RUN_DIR`` writes a finished run's HTML report.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import re
import sys
from importlib.resources import files
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lightning_dyn._config_checks import config_errors, trainer_override_error

# Nothing here imports torch or Lightning: the command answers --help, an unknown name or a
# mistyped key before they load (lightning_dyn._run does the work).


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


def optuna_missing_error(argv: list[str]) -> str | None:
    """``hparams_search=`` without the Optuna sweeper installed: how to get it, else None."""
    if not any(a.startswith("hparams_search=") for a in argv):
        return None
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:
        return None
    return (
        "hparams_search= runs an Optuna study through hydra-optuna-sweeper, which is not "
        'installed: pip install "lightning-dyn[optuna]" (or pip install hydra-optuna-sweeper).'
    )


@hydra.main(version_base="1.3", config_path="pkg://lightning_dyn.configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    errors = config_errors(cfg)
    if errors:
        sys.exit("lightning-dyn: " + "\n".join(errors))
    from lightning_dyn._run import run  # torch and Lightning, once the config is known good

    return run(cfg)  # the objective of a sweeper (hparams_search), or None


def report_main(argv: list[str]) -> None:
    """``lightning-dyn report RUN_DIR [--out FILE]``: the HTML report of a finished run."""
    parser = argparse.ArgumentParser(
        prog="lightning-dyn report",
        description="One self-contained HTML file of a finished run: config, summary, every "
        "logged curve, figure and table (from the offline W&B run and/or the CSV metrics).",
    )
    parser.add_argument("run_dir", help="the run's directory, e.g. outputs/grokking/<time>")
    parser.add_argument("--out", help="where to write it (default: RUN_DIR/report.html)")
    arguments = parser.parse_args(argv)
    from lightning_dyn._report import write_report  # matplotlib, not torch

    try:
        path = write_report(arguments.run_dir, arguments.out)
    except FileNotFoundError as error:
        sys.exit(f"lightning-dyn report: {error}")
    print(f"lightning-dyn report: wrote {path}")


def eval_arguments(argv: list[str]) -> list[str]:
    """The hydra arguments of ``lightning-dyn eval [task=test] ckpt_path=P [overrides]``.

    ``task=validate`` unless a task is given. A checkpoint inside a run directory
    (``<run>/checkpoints/last.ckpt``) is evaluated with that run's own composed config
    (``<run>/.hydra/config.yaml``), unless ``--config-dir``/``--config-path`` choose one.
    """
    arguments = list(argv)
    if not any(a.lstrip("+").startswith("task=") for a in arguments):
        arguments.append("++task=validate")
    given = [a.split("=", 1)[1] for a in arguments if a.startswith("ckpt_path=")]
    chosen = any(a.startswith(("--config-dir", "-cd", "--config-path", "-cp")) for a in arguments)
    if given and not chosen:
        run_config = Path(given[-1]).resolve().parent.parent / ".hydra" / "config.yaml"
        if run_config.is_file():
            arguments += [f"--config-path={run_config.parent}", "--config-name=config"]
            if not any(a.startswith("hydra.run.dir=") for a in arguments):
                run_dir = run_config.parent.parent
                arguments.append(f"hydra.run.dir={run_dir}/eval/${{now:%Y-%m-%d_%H-%M-%S}}")
    return arguments


def main() -> None:
    """Console entry point: ``lightning-dyn [hydra overrides]``, ``lightning-dyn eval
    ckpt_path=...`` or ``lightning-dyn report RUN_DIR``."""
    if sys.argv[1:2] == ["report"]:
        report_main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["eval"]:
        sys.argv = [sys.argv[0], *eval_arguments(sys.argv[2:])]
    # As `python -m` does: a user's module in the working directory (my_models.py) can be a
    # `_target_` of a --config-dir recipe when run through the console script too.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    error = (
        check_list_overrides(sys.argv[1:])
        or trainer_override_error(sys.argv[1:])
        or optuna_missing_error(sys.argv[1:])
    )
    if error:
        sys.exit(error)
    _hydra_main()


if __name__ == "__main__":
    main()
