"""Module settings that the data module already knows (classes, input size, grid, vocabulary).

A recipe module leaves such a setting ``None`` and takes it from the trainer's data module in
``setup()``, as Lightning's docs build a model from ``self.trainer.datamodule``: a config then
says the number of classes once. The resolved value goes into ``hparams``, so a checkpoint
carries it and ``load_from_checkpoint`` builds the model at once; a value given to the module
must agree with the data module's.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import lightning.pytorch as pl


def _canonical(value: Any) -> Any:
    # Hydra gives lists where Python code gives tuples: (1, 8, 8) and [1, 8, 8] agree.
    return tuple(value) if isinstance(value, (list, tuple)) else value


def datamodule_attributes(module: pl.LightningModule, names: Collection[str]) -> dict[str, Any]:
    """``{name: the trainer's data module's attribute}``, ``None`` where it has none."""
    datamodule = module.trainer.datamodule
    return {name: getattr(datamodule, name, None) for name in names}


def resolve_datamodule_settings(
    module: pl.LightningModule,
    known: Mapping[str, Any],
    at_least: Collection[str] = (),
    optional: Collection[str] = (),
) -> None:
    """Fill the module's ``None`` hyperparameters from ``known``; check the given ones.

    Args:
        module: a module that saved its hyperparameters; ``module.hparams[name]`` is updated.
        known: the data module's value of each setting (``None``: it does not say).
        at_least: settings whose given value may exceed the data module's (a context length).
        optional: settings that may stay ``None`` (the module has a default for them).

    Raises:
        ValueError: a setting is ``None``, not ``optional``, and the data module does not know
            it; or a given setting differs from the data module's (is smaller, for
            ``at_least``).
    """
    datamodule = module.trainer.datamodule
    filled = False
    source = type(datamodule).__name__ if datamodule is not None else "none (loaders passed)"
    owner = type(module).__name__
    for name, value in known.items():
        given = module.hparams[name]
        if given is None:
            if value is None and name in optional:
                continue
            if value is None:
                raise ValueError(
                    f"{owner}({name}=None) takes {name} from the trainer's data module, but the "
                    f"data module ({source}) has no {name!r}; pass {name}= to {owner} or fit "
                    f"with a data module that has a {name!r} attribute."
                )
            module.hparams[name] = value
            filled = True
        elif value is not None and name in at_least and given < value:
            raise ValueError(
                f"{owner}({name}={given!r}) must be at least the data module's {name}={value!r}."
            )
        elif value is not None and name not in at_least and _canonical(given) != _canonical(value):
            raise ValueError(
                f"{owner}({name}={given!r}) does not match the data module's {name}={value!r}; "
                f"leave {name}=None to take the data module's."
            )
    if filled:
        # Saved again so that the initial hyperparameters, which Lightning logs and merges with
        # the data module's, hold the value too (None against the data module's is a conflict).
        module.save_hyperparameters(dict(module.hparams))
