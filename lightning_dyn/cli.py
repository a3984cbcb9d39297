"""``lightning-dyn``: train a bundled recipe from the hydra configs in ``lightning_dyn/configs``.

Run ``lightning-dyn --help`` for the config groups and ``lightning-dyn --cfg job`` to print the
composed config without training.
"""

from __future__ import annotations

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


@hydra.main(version_base="1.3", config_path="pkg://lightning_dyn.configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    errors = config_errors(cfg)
    if errors:
        sys.exit("lightning-dyn: " + "\n".join(errors))
    from lightning_dyn._run import run  # torch and Lightning, once the config is known good

    run(cfg)


def main() -> None:
    """Console entry point: ``lightning-dyn [hydra overrides]``."""
    # As `python -m` does: a user's module in the working directory (my_models.py) can be a
    # `_target_` of a --config-dir recipe when run through the console script too.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    error = check_list_overrides(sys.argv[1:]) or trainer_override_error(sys.argv[1:])
    if error:
        sys.exit(error)
    _hydra_main()


if __name__ == "__main__":
    main()
