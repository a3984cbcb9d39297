"""The conformance matrix: every plugin, in every setting users run, on models it did not write.

A :class:`Plugin` says how a user attaches it to each model family of ``user_models.py`` (the
callbacks, optimizer factory or loss they would write, with the documented adapters); a
:class:`Setting` is one way users train (a precision, accumulation, a frozen or compiled
submodule, a batch format, a run that diverges, uneven DDP shards). ``test_conformance.py`` runs
every pair and checks the outcome the plugin declares for it:

- **works**: the fit completes, the plugin logs its metrics (finite, except after a divergence),
  and the setting's own checks hold (a frozen submodule keeps its mode and BatchNorm
  statistics; a diverged run warns and records NaN; uneven DDP shards give the 1-process metrics);
- **refused**: the fit stops at setup, before the first step, with a message naming the
  reason and what to use instead (``Plugin.refused``);
- **n/a**: the setting does not reach the plugin, with the reason (``Plugin.not_applicable``).

``docs/compatibility.md`` is generated from this file (``python tests/conformance.py``), and a
test fails when it is out of date.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from harness import REGISTRY, pde_pair, with_stablemax_head
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from user_models import (
    TokenData,
    UserBoring,
    UserCNN,
    UserDictCNN,
    UserImageData,
    UserTransformer,
)

from lightning_dyn.callbacks import (
    LayerwiseLRMonitor,
    MetricCurves,
    NeuralCollapseMonitor,
    OutlierPairDetector,
    PerpGrad,
    SharpnessMonitor,
    SoftmaxCollapseMonitor,
    ThresholdCrossing,
)
from lightning_dyn.nn import StableMaxCrossEntropyLoss
from lightning_dyn.optim import LANTON, param_groups
from lightning_dyn.strategies import ExpertParallelStrategy

STEPS = 4
"""Optimizer steps of every conformance run."""

DIVERGE_AT_STEP = 2
"""The diverging setting turns the parameters to NaN before this optimizer step."""


# --- settings ------------------------------------------------------------------------------------


USER_FAMILIES = ("cnn", "tensor", "tokens")
"""The families every model-agnostic setting runs on: a BatchNorm/dropout CNN, Lightning's
``BoringModel`` and its demo ``Transformer``."""

FAMILY_TITLES = {
    "cnn": "the BN CNN",
    "tensor": "`BoringModel`",
    "tokens": "the demo `Transformer`",
    "dict": "the dict-batch CNN",
    "pde": "the PDE module",
}


@dataclass(frozen=True)
class Setting:
    """One way users train.

    Args:
        name: column id.
        title: column header of ``docs/compatibility.md``.
        families: the model families of ``user_models.py`` it runs on.
        trainer: builds extra ``Trainer`` arguments (fresh plugin objects every run).
        model: family -> extra arguments of its module.
        data: family -> extra arguments of its data module.
        prepare: changes the built module as a user would (freeze, compile).
        diverge: turn every parameter to NaN before step ``DIVERGE_AT_STEP``.
        ddp: ``"uneven"``: 2 processes on an odd dataset, learning rate 0 so that both runs
            measure the same parameters, the logged metrics compared with 1 process.
        not_on: family -> why the setting cannot be built on it.
    """

    name: str
    title: str
    families: tuple[str, ...] = USER_FAMILIES
    trainer: Callable[[], dict[str, Any]] = dict
    model: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    data: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    prepare: Callable[[pl.LightningModule], None] | None = None
    diverge: bool = False
    ddp: str | None = None
    not_on: Mapping[str, str] = field(default_factory=dict)

    @property
    def any_model(self) -> bool:
        """Whether the setting is about training, not about one kind of model or batch."""
        return self.families == USER_FAMILIES


BACKBONES = {
    "UserCNN": "features",
    "UserDictCNN": "features",
    "UserBoring": "layer",
    "UserTransformer": "model.transformer.encoder",
    "PDEModule": "trunk",
}
"""The submodule the frozen and compiled settings act on, per module class."""


def _owner_and_name(module: pl.LightningModule) -> tuple[nn.Module, str]:
    *path, name = BACKBONES[type(module).__name__].split(".")
    owner = module
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def backbone(module: pl.LightningModule) -> nn.Module:
    owner, name = _owner_and_name(module)
    return getattr(owner, name)


def freeze_backbone(module: pl.LightningModule) -> None:
    """A frozen backbone, as users write it: eval mode, no gradients."""
    backbone(module).eval()
    backbone(module).requires_grad_(False)


def compile_backbone(module: pl.LightningModule) -> None:
    """``torch.compile`` on a submodule. ``aot_eager`` runs the AOTAutograd path every compile
    backend but ``"eager"`` takes, without inductor's minutes of C++ compilation on a CPU."""
    owner, name = _owner_and_name(module)
    setattr(owner, name, torch.compile(getattr(owner, name), backend="aot_eager"))


SETTINGS: list[Setting] = [
    Setting("64-true", "`64-true`", trainer=lambda: {"precision": "64-true"}),
    Setting("bf16-true", "`bf16-true`", trainer=lambda: {"precision": "bf16-true"}),
    Setting("bf16-mixed", "`bf16-mixed`", trainer=lambda: {"precision": "bf16-mixed"}),
    Setting(
        "fp16-scaler",
        "fp16 + GradScaler",
        trainer=lambda: {
            "plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]
        },
    ),
    Setting(
        "accumulate",
        "accumulate 2",
        trainer=lambda: {"accumulate_grad_batches": 2},
        data={"cnn": {"batch_size": 24}, "tokens": {"batch_size": 8}, "pde": {"batch_size": 2}},
    ),
    Setting("clip", "clip 0.5", trainer=lambda: {"gradient_clip_val": 0.5}),
    Setting(
        "frozen",
        "frozen backbone in eval mode",
        prepare=freeze_backbone,
        not_on={"tensor": "BoringModel has one layer: freezing it leaves nothing to train"},
    ),
    Setting("compiled", "compiled submodule", prepare=compile_backbone),
    Setting("tensor-batch", "bare-tensor batches", families=("tensor",)),
    Setting("dict-batch", "dict batches", families=("dict",)),
    Setting("per-token", "per-token targets", families=("tokens",)),
    Setting("diverges", "diverges to NaN", diverge=True),
    Setting(
        "ddp-uneven",
        "2-process DDP, uneven shards",
        families=("cnn",),
        model={"cnn": {"lr": 0.0, "batch_norm": False, "dropout": 0.0}},
        data={"cnn": {"n": 47}},
        ddp="uneven",
    ),
]


# --- families: the user's modules ----------------------------------------------------------------


@dataclass
class Parts:
    """What a user adds to their model and Trainer for one plugin."""

    callbacks: list[pl.Callback] = field(default_factory=list)
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None
    criterion: Callable | None = None
    prepare: Callable[[pl.LightningModule], None] | None = None


def build_family(
    family: str, parts: Parts, model: Mapping[str, Any], data: Mapping[str, Any]
) -> tuple[pl.LightningModule, pl.LightningDataModule | None]:
    """The user's module and data of ``family``, with the plugin's parts."""
    extra = {"optimizer": parts.optimizer}
    if family in ("cnn", "dict"):
        cls = UserCNN if family == "cnn" else UserDictCNN
        # The CNN users bring: BatchNorm and dropout (DDP parity settings turn them off).
        options = {"batch_norm": True, "dropout": 0.25, **model}
        module = cls(criterion=parts.criterion, **extra, **options)
        return module, UserImageData(as_dict=family == "dict", **data)
    if family == "tensor":
        return UserBoring(**extra), None
    if family == "tokens":
        return UserTransformer(**extra), TokenData(**data)
    if family == "pde":
        return pde_pair(**model, **data)
    raise ValueError(f"unknown family {family!r}")


# The documented adapters, per family: how a user tells a monitor to read their batches.
def _boring_targets(batch: torch.Tensor) -> torch.Tensor:
    """``BoringModel`` has no labels; a user measuring it as a classifier picks some."""
    return (batch[:, 0] > 0).long()


LOGITS_FN: dict[str, Callable | None] = {
    "cnn": None,  # the default: (inputs, targets) and module(inputs)
    "dict": lambda module, batch: (module(batch["image"]), batch["label"]),
    "tensor": lambda module, batch: (module(batch), _boring_targets(batch)),
    "tokens": lambda module, batch: (module(batch[0], batch[1]), batch[1]),
    "pde": None,
}
HESSIAN_LOSS_FN: dict[str, Any] = {
    "cnn": "softmax",
    "dict": lambda forward, batch: F.cross_entropy(forward(batch["image"]), batch["label"]),
    "tensor": lambda forward, batch: F.mse_loss(forward(batch), torch.ones(len(batch), 2)),
    "tokens": lambda forward, batch: F.nll_loss(forward(batch[0], batch[1]), batch[1].flatten()),
}


# --- plugins -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plugin:
    """One exported plugin and how users attach it.

    Args:
        name: the exported name.
        attach: ``family -> Parts``.
        keys: prefixes of the metric keys it must log in a working run.
        monitor: it follows the monitors' divergence policy (warns once, logs NaN).
        family: ``"pde"`` for plugins that live in a PDE model: the model-agnostic settings then
            run on the PDE module instead of the user families.
        refused: ``setting``, ``setting@family`` or ``@family`` -> a fragment of the message it
            refuses the cell with, at setup.
        not_applicable: keyed alike -> why the setting does not reach the plugin.
        ddp_rtol: relative tolerance of the DDP metric comparison.
        strategy: builds the plugin when it is a strategy: every setting then runs on 2
            processes under it.
    """

    name: str
    attach: Callable[[str], Parts]
    keys: tuple[str, ...] = ()
    monitor: bool = False
    family: str = "user"
    refused: Mapping[str, str] = field(default_factory=dict)
    not_applicable: Mapping[str, str] = field(default_factory=dict)
    ddp_rtol: float = 1e-4
    strategy: Callable[[], Any] | None = None

    def families(self, setting: Setting) -> tuple[str, ...]:
        """The families the cell runs on."""
        if self.family == "pde" and setting.any_model:
            return ("pde",)
        return setting.families

    def outcome(self, setting: Setting, family: str) -> tuple[str, str]:
        """``("works" | "refused" | "n/a", reason)`` declared for ``setting`` on ``family``."""
        if family in setting.not_on:
            return "n/a", setting.not_on[family]
        for key in (f"{setting.name}@{family}", setting.name, f"@{family}"):
            if key in self.refused:
                return "refused", self.refused[key]
            if key in self.not_applicable:
                return "n/a", self.not_applicable[key]
        return "works", ""


def _lanton(module: nn.Module) -> LANTON:
    """A user's ``configure_optimizers`` returning LANTON over the module's parameter groups."""
    return LANTON(param_groups(module, lr=0.02), ns_dtype=torch.float32)


_NO_OWN_DATA = "reads no data itself: Lightning's sampler decides what it trains on"
_IN_THE_MODEL = "a layer of the user's network: batches do not reach it"
_PDE_ONLY = dict.fromkeys(("tensor-batch", "dict-batch", "per-token"), _IN_THE_MODEL)
_PDE_REFUSALS = {
    "bf16-true": "PDEModule computes in float64 and cannot train with precision='bf16-true' "
    "(its weights would be converted to 16 bits). Use the default '32-true' or '64-true'"
}
_CLASSIFIER_LOSS_NA = {
    "@tensor": "a classification loss; BoringModel trains a regression",
    "@tokens": "the demo Transformer returns log-probabilities, a StableMax loss needs logits",
}

PLUGINS: list[Plugin] = [
    Plugin(
        "ThresholdCrossing",
        lambda family: Parts([ThresholdCrossing("train/loss", 100.0, mode="min")]),
        keys=("threshold_crossing/train/loss",),
        not_applicable={"ddp-uneven": _NO_OWN_DATA},
    ),
    Plugin(
        "MetricCurves",
        lambda family: Parts([MetricCurves({"loss": ["train/loss", "val/loss"]}, every_n_steps=2)]),
        not_applicable={"ddp-uneven": _NO_OWN_DATA},
    ),
    Plugin(
        "PerpGrad",
        lambda family: Parts([PerpGrad()]),
        keys=("perp_grad/cos_w_g/",),
        not_applicable={"ddp-uneven": _NO_OWN_DATA},
    ),
    Plugin(
        "LANTON",
        lambda family: Parts(optimizer=_lanton),
        not_applicable={"ddp-uneven": _NO_OWN_DATA},
    ),
    Plugin(
        "LayerwiseLRMonitor",
        lambda family: Parts([LayerwiseLRMonitor(every_n_steps=2)], optimizer=_lanton),
        keys=("layerwise_lr/lr/",),
        not_applicable={"ddp-uneven": _NO_OWN_DATA},
    ),
    Plugin(
        "SoftmaxCollapseMonitor",
        lambda family: Parts(
            [SoftmaxCollapseMonitor(every_n_steps=2, logits_fn=LOGITS_FN[family])]
        ),
        keys=("softmax_collapse/sc_fraction", "softmax_collapse/cos_w_g/"),
        monitor=True,
    ),
    Plugin(
        "OutlierPairDetector",
        lambda family: Parts(
            [
                OutlierPairDetector(
                    k=6,
                    window=3,
                    min_flips=0,
                    corr_threshold=0.01,
                    cos_threshold=0.0,
                    logits_fn=LOGITS_FN[family],
                )
            ]
        ),
        keys=("opposing/probe_loss", "opposing/num_groups"),
        monitor=True,
        ddp_rtol=1e-3,
    ),
    Plugin(
        "SharpnessMonitor",
        lambda family: Parts(
            [SharpnessMonitor(every_n_steps=2, loss_fn=HESSIAN_LOSS_FN[family], tol=1e-4)]
        ),
        keys=("sharpness/lambda_1", "sharpness/hvps"),
        monitor=True,
        ddp_rtol=1e-3,
    ),
    Plugin(
        "NeuralCollapseMonitor",
        lambda family: Parts([NeuralCollapseMonitor(logits_fn=LOGITS_FN[family], figure=False)]),
        keys=("nc/nc1", "nc/nc4"),
        monitor=True,
    ),
    Plugin(
        "StableMaxCrossEntropyLoss",
        lambda family: Parts(criterion=StableMaxCrossEntropyLoss()),
        not_applicable={**_CLASSIFIER_LOSS_NA, "ddp-uneven": _NO_OWN_DATA},
    ),
    Plugin(
        "StableMaxHead",
        lambda family: Parts(prepare=with_stablemax_head),
        not_applicable={**_CLASSIFIER_LOSS_NA, "ddp-uneven": _NO_OWN_DATA},
    ),
    Plugin(
        "HardConstraintLayer",
        lambda family: Parts(),
        family="pde",
        refused=_PDE_REFUSALS,
        not_applicable={**_PDE_ONLY, "ddp-uneven": _NO_OWN_DATA},
    ),
    Plugin(
        "HardConstraintMoE",
        lambda family: Parts(),
        family="pde",
        refused=_PDE_REFUSALS,
        not_applicable={**_PDE_ONLY, "ddp-uneven": _NO_OWN_DATA},
    ),
    Plugin(
        "ExpertParallelStrategy",
        lambda family: Parts(),
        keys=("train/interface_jump", "train/lm_iterations"),
        family="pde",
        refused=_PDE_REFUSALS,
        not_applicable={
            **_PDE_ONLY,
            "ddp-uneven": "replicates the data on every rank: there are no shards",
        },
        strategy=lambda: ExpertParallelStrategy(start_method="spawn", process_group_backend="gloo"),
    ),
]


def plugin_model_options(plugin: Plugin) -> dict[str, Any]:
    """Module arguments a plugin's family needs on top of the setting's."""
    if plugin.name == "HardConstraintLayer":
        return {"constraint": "hard"}
    if plugin.name == "HardConstraintMoE":
        return {"expert_parallel": False}
    if plugin.name == "ExpertParallelStrategy":
        return {"expert_parallel": "auto"}
    return {}


CASES: list[tuple[Plugin, Setting, str]] = [
    (plugin, setting, family)
    for plugin in PLUGINS
    for setting in SETTINGS
    for family in plugin.families(setting)
]


# --- the document --------------------------------------------------------------------------------

REGISTRY_COLUMNS = (
    "train",
    "second fit",
    "exact resume",
    "2-process DDP, metrics compared",
    "2-process FSDP2, metrics compared",
)


def _cell(plugin: Plugin, setting: Setting, notes: dict[str, int]) -> str:
    """One cell: "works" where it works on every family of the setting, else the exceptions."""
    families = plugin.families(setting)
    outcomes = {family: plugin.outcome(setting, family) for family in families}
    if all(kind == "works" for kind, _ in outcomes.values()):
        return "works"
    parts = []
    for (kind, reason), group in _grouped(outcomes).items():
        if kind == "works":
            parts.insert(0, "works")  # on the families no exception names
            continue
        number = notes.setdefault(f"{kind}: {reason}", len(notes) + 1)
        on = "" if len(families) == 1 else " on " + ", ".join(FAMILY_TITLES[f] for f in group)
        parts.append(f"{kind}{on} [{number}]")
    return "; ".join(parts)


def _grouped(outcomes: dict[str, tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    grouped: dict[tuple[str, str], list[str]] = {}
    for family, outcome in outcomes.items():
        grouped.setdefault(outcome, []).append(family)
    return grouped


def compatibility_markdown() -> str:
    """``docs/compatibility.md``: the matrix as a table, from the declarations above."""
    registered = {entry.name for entry in REGISTRY}
    lines = [
        "# Compatibility",
        "",
        "Generated by `python tests/conformance.py > docs/compatibility.md` from the conformance",
        "registry (`tests/conformance.py`, `tests/harness.py`); `pytest` fails when this file is",
        "out of date. Every cell is tested on models `lightning_dyn` did not write: each setting",
        "about training runs on a BatchNorm/dropout CNN, Lightning's `BoringModel` and its demo",
        "`Transformer` (with the documented adapters), the batch-format settings on their own",
        "model. **works**: trains to the end in a real `Trainer`, logs the plugin's metrics and",
        "passes the setting's own checks (a frozen backbone keeps its mode and BatchNorm",
        "statistics; a diverged run warns with the step and records NaN; uneven DDP shards give",
        "the 1-process metrics); **refused**: stops at setup, before the first step, with the",
        "reason and what to use instead; **n/a**: why the setting does not reach the plugin.",
        "",
        "The first five columns come from `tests/test_registry.py` and `tests/test_sharded.py`",
        "(the package's own tiny models and a user CNN); the DDP and FSDP2 columns compare every",
        "parameter and every logged metric of the 2-process run with the 1-process run (FSDP2:",
        "`ModelParallelStrategy` with `fully_shard` on every leaf module and the root). The",
        "others come from `tests/test_conformance.py`.",
        "",
    ]
    header = ["plugin", *REGISTRY_COLUMNS, *(s.title for s in SETTINGS)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes: dict[str, int] = {}
    for plugin in PLUGINS:
        cells = ["works" if plugin.name in registered else "—" for _ in REGISTRY_COLUMNS]
        refusal = next((e.fsdp_refused for e in REGISTRY if e.name == plugin.name), "")
        if refusal:
            number = notes.setdefault(f"refused: {refusal}", len(notes) + 1)
            cells[-1] = f"refused [{number}]"
        for setting in SETTINGS:
            cells.append(_cell(plugin, setting, notes))
        lines.append(f"| `{plugin.name}` | " + " | ".join(cells) + " |")
    lines += ["", "Notes:", ""]
    lines += [f"{number}. {text}" for text, number in notes.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(compatibility_markdown(), end="")
