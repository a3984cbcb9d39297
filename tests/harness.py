"""The registry of every exported callback, optimizer and strategy, and the helpers that train them.

Each :class:`Entry` pairs one export of ``lightning_dyn.callbacks`` / ``optim`` / ``strategies``
(or a method module of ``lightning_dyn.nn`` that trains inside a recipe) with a tiny model and
the settings it needs. ``test_registry.py`` trains every entry in
a real ``Trainer``, fits it twice, resumes it from a checkpoint and runs it under 2-process
``ddp_spawn``; an export without an entry fails the suite.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.strategies import Strategy
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer
from user_models import UserCNN, UserImageData

import lightning_dyn
import lightning_dyn.strategies
from lightning_dyn.callbacks import (
    LayerwiseLRMonitor,
    NeuralCollapseMonitor,
    OutlierPairDetector,
    PerpGrad,
    SharpnessMonitor,
    SoftmaxCollapseMonitor,
)
from lightning_dyn.nn import StableMaxCrossEntropyLoss, StableMaxHead
from lightning_dyn.optim import LANTON
from lightning_dyn.recipes import (
    ModularArithmeticDataModule,
    ModularArithmeticModule,
    PDEDataModule,
    PDEModule,
)
from lightning_dyn.strategies import ExpertParallelStrategy

# p=12: 144 pairs split 72/72, even sizes so that 2-rank DDP needs no padding and a full-batch
# step on 2 ranks averages to exactly the 1-rank gradient.
TINY_DATA = {"p": 12, "train_fraction": 0.5, "seed": 0}
TINY_MODULE = {"p": 12, "hidden_sizes": (16, 16)}


@dataclass(frozen=True)
class Entry:
    """One exported callback or optimizer and how to exercise it.

    Args:
        name: the exported name (``lightning_dyn.callbacks.__all__`` or ``optim.__all__``).
        make_callback: builds a fresh callback instance.
        make_optimizer: builds an optimizer factory ``params -> Optimizer`` for the module.
        module: overrides of the tiny ``ModularArithmeticModule`` arguments.
        data: overrides of the tiny ``ModularArithmeticDataModule`` arguments.
        trainer: extra ``Trainer`` arguments (precision, accumulation ...).
        expect_logged: metric keys (prefixes) the entry must log within ``steps`` steps.
        steps: optimizer steps of the short runs; resume runs take ``2 * steps``.
        variant: names a second entry for the same export (e.g. another precision).
        ddp_matches_single: whether 2-rank DDP must reproduce the 1-process run. True for full
            batch (two equal halves average to the full gradient); mini-batches differ.
        ddp_atol: absolute tolerance of that comparison for parameters (float summation order
            differs).
        ddp_rtol: relative tolerance of that comparison for callback state.
        ddp_state_atol: absolute tolerance added to it (for vectors with entries near zero).
        make_module_and_data: builds a module and data module of the user's own (not from this
            package) in place of the tiny grokking pair; ``module``/``data``/``make_optimizer``
            do not apply then.
        make_ddp_strategy: builds the 2-process strategy of the DDP test; default
            ``"ddp_spawn"``.
        fsdp_refused: a fragment of the message the entry refuses FSDP2 with at setup, or
            ``""`` when it must train sharded to the 1-process numbers (``test_sharded.py``).
    """

    name: str
    make_callback: Callable[[], pl.Callback] | None = None
    make_optimizer: Callable[[], Callable] | None = None
    module: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    trainer: Mapping[str, Any] = field(default_factory=dict)
    expect_logged: tuple[str, ...] = ()
    steps: int = 6
    variant: str = ""
    ddp_matches_single: bool = True
    ddp_atol: float = 1e-5
    ddp_rtol: float = 1e-5
    ddp_state_atol: float = 0.0
    make_module_and_data: Callable[[], tuple[pl.LightningModule, Any]] | None = None
    make_ddp_strategy: Callable[[], Any] | None = None
    fsdp_refused: str = ""

    @property
    def id(self) -> str:
        return f"{self.name}-{self.variant}" if self.variant else self.name

    def build(self) -> tuple[pl.LightningModule, pl.LightningDataModule, list]:
        """A fresh model, data module and callback list, seeded identically every call."""
        pl.seed_everything(1234, verbose=False)
        callbacks = [self.make_callback()] if self.make_callback else []
        if self.make_module_and_data is not None:
            return (*self.make_module_and_data(), callbacks)
        optimizer = self.make_optimizer() if self.make_optimizer else None
        module = ModularArithmeticModule(**{**TINY_MODULE, **self.module}, optimizer=optimizer)
        data = ModularArithmeticDataModule(**{**TINY_DATA, **self.data})
        return module, data, callbacks


REGISTRY: list[Entry] = [
    Entry(
        name="ThresholdCrossing",
        # Train accuracy passes 0.2 at step 4, before the checkpoint at step 6 and stays above:
        # a resumed run reports step 4 only if the checkpoint restored it.
        make_callback=lambda: lightning_dyn.callbacks.ThresholdCrossing("train/acc", 0.2),
        expect_logged=("threshold_crossing/train/acc",),
        steps=6,
    ),
    Entry(
        name="MetricCurves",
        # Its state is the history of what it draws: a resume must restore the whole run's.
        # Training metrics only: Lightning does not rerun the validation of the step a
        # checkpoint was written after (test_metric_curves.py pins what the curve shows there).
        make_callback=lambda: lightning_dyn.callbacks.MetricCurves(
            {"accuracy": ["train/acc"], "loss": ["train/loss"]}, every_n_steps=2
        ),
    ),
    Entry(name="PerpGrad", make_callback=PerpGrad, expect_logged=("perp_grad/cos_w_g/",)),
    Entry(
        name="PerpGrad",
        variant="global-accumulate",
        make_callback=lambda: PerpGrad(mode="global", rescale=False),
        data={"batch_size": 18},  # 4 micro-batches, 2 per step: 2 steps per epoch
        trainer={"accumulate_grad_batches": 2},
        expect_logged=("perp_grad/cos_w_g/",),
        ddp_matches_single=False,
    ),
    Entry(
        name="PerpGrad",
        variant="16-mixed-gradscaler",
        make_callback=PerpGrad,
        # On CPU, precision="16-mixed" means bf16 without a scaler; this is the real scaler path.
        trainer={
            "plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]
        },
        expect_logged=("perp_grad/cos_w_g/",),
        # SGD, not the recipe's AdamW: its eps=1e-25 turns the rounding differences of fp16
        # half-batch activations into whole steps of size lr, and the DDP trajectory drifts.
        make_optimizer=lambda: functools.partial(torch.optim.SGD, lr=0.5),
        # fp16 activations of a half batch still round differently from the full batch: the
        # logged cosines (in [-1, 1]) agree to 1e-4 absolute.
        ddp_atol=1e-3,
        ddp_rtol=1e-3,
        ddp_state_atol=1e-4,
    ),
    Entry(
        name="LANTON",
        # The tiny MLP has no biases: every tensor is a hidden matrix of the default group.
        # Newton-Schulz in float32: in bf16 (the default) a gradient summed in another order
        # by the DDP all-reduce rounds a few entries of the polar factor differently (1e-3 here).
        make_optimizer=lambda: functools.partial(LANTON, lr=0.02, ns_dtype=torch.float32),
        ddp_atol=1e-4,
    ),
    Entry(
        name="LayerwiseLRMonitor",
        make_callback=lambda: LayerwiseLRMonitor(every_n_steps=2),
        make_optimizer=lambda: functools.partial(LANTON, lr=0.02, ns_dtype=torch.float32),
        expect_logged=("layerwise_lr/lr/group0.0", "layerwise_lr/noise/group0.2"),
        ddp_atol=1e-4,
        # The noise is a norm of G_t - G_{t-1}: a difference of nearly equal gradients, which
        # amplifies the summation-order differences of the all-reduce.
        ddp_rtol=1e-3,
    ),
    Entry(
        name="SoftmaxCollapseMonitor",
        make_callback=lambda: SoftmaxCollapseMonitor(every_n_steps=2),
        expect_logged=(
            "softmax_collapse/sc_fraction",
            "softmax_collapse/zero_loss_fraction",
            "softmax_collapse/max_logit",
            "softmax_collapse/weight_norm/model.layers.0.weight",
            "softmax_collapse/cos_w_g/model.layers.4.weight",
        ),
    ),
]


# Loose thresholds so that the tiny runs flag pairs: the search, the gradient all-reduce, the
# detections in the checkpoint and the media logging all run.
_LOOSE_DETECTOR = {
    "k": 6,
    "window": 4,
    "corr_threshold": 0.01,
    "cos_threshold": 0.0,
    "min_flips": 0,
}
REGISTRY += [
    Entry(
        name="OutlierPairDetector",
        variant="user-cnn",
        make_callback=lambda: OutlierPairDetector(**_LOOSE_DETECTOR),
        make_module_and_data=lambda: (UserCNN(), UserImageData()),
        expect_logged=("opposing/probe_loss", "opposing/num_groups", "opposing/pair_corr"),
        # The correlation is of loss *changes*, differences of nearly equal float32 losses that
        # the two ranks' half-batch forwards round differently.
        ddp_rtol=1e-3,
    ),
    Entry(
        name="OutlierPairDetector",
        variant="group-fn-sketch",
        make_callback=lambda: OutlierPairDetector(
            every_n_steps=2, group_fn=_label_groups, sketch_dim=64, **_LOOSE_DETECTOR
        ),
        expect_logged=("opposing/probe_loss", "opposing/num_flagged"),
        ddp_rtol=1e-3,
    ),
]

REGISTRY += [
    Entry(
        name="SharpnessMonitor",
        variant="finite-difference",
        # First of its name, so the FSDP2 leg takes it: under FSDP2 only finite differences run.
        make_callback=lambda: SharpnessMonitor(
            every_n_steps=2, n_eigs=2, tol=1e-4, method="finite_difference"
        ),
        expect_logged=("sharpness/lambda_1", "sharpness/lambda_2", "sharpness/ratio"),
        # Central differences of float32 gradients: products to ~1e-4, eigenvalues to ~1e-3.
        ddp_rtol=1e-2,
        ddp_state_atol=1e-3,
    ),
    Entry(
        name="SharpnessMonitor",
        # The tiny grokking model trains with AdamW: the preconditioned path, measured from
        # step 2 on (Adam has a preconditioner only after its first step).
        make_callback=lambda: SharpnessMonitor(every_n_steps=2, n_eigs=2, tol=1e-4),
        expect_logged=(
            "sharpness/lambda_1",
            "sharpness/lambda_2",
            "sharpness/preconditioned_lambda_1",
            "sharpness/ratio",
            "sharpness/hvps",
        ),
        # Eigenvectors converge to tol, not to the last bit: DDP's summation order moves them.
        ddp_rtol=1e-2,
        ddp_state_atol=1e-4,
    ),
    Entry(
        name="SharpnessMonitor",
        variant="user-cnn-momentum-trace-density",
        make_callback=lambda: SharpnessMonitor(
            every_n_steps=3, smallest=True, trace_samples=4, density_steps=4, density_vectors=2
        ),
        make_module_and_data=lambda: (UserCNN(momentum=0.9), UserImageData()),
        expect_logged=(
            "sharpness/lambda_1",
            "sharpness/lambda_min",
            "sharpness/trace",
            "sharpness/threshold",
        ),
        ddp_rtol=1e-2,
        ddp_state_atol=1e-4,
    ),
]

REGISTRY += [
    Entry(
        name="NeuralCollapseMonitor",
        # Full batch: one step per epoch. Each DDP rank reads its shard of the training set and
        # torchmetrics sums the statistics, so the metrics are those of the whole set.
        make_callback=lambda: NeuralCollapseMonitor(every_n_epochs=2),
        expect_logged=("nc/nc1", "nc/nc4", "nc/nc3", "nc/gram_distance", "nc/cdnv"),
        ddp_rtol=1e-4,
        ddp_state_atol=1e-6,
    ),
    Entry(
        name="NeuralCollapseMonitor",
        variant="user-cnn-lagged",
        make_callback=lambda: NeuralCollapseMonitor(nc4="lagged", figure=False),
        make_module_and_data=lambda: (UserCNN(), UserImageData()),
        expect_logged=("nc/nc1", "nc/nc4", "nc/equinorm_classifier"),
        ddp_rtol=1e-4,
        ddp_state_atol=1e-6,
    ),
    Entry(
        name="HardConstraintLayer",
        make_module_and_data=lambda: pde_pair(constraint="hard"),
        expect_logged=("train/lm_iterations", "train/rel_l2"),
        ddp_atol=1e-10,
    ),
    Entry(
        name="StableMaxCrossEntropyLoss",
        make_module_and_data=lambda: (
            UserCNN(criterion=StableMaxCrossEntropyLoss()),
            UserImageData(),
        ),
        expect_logged=("train/loss",),
    ),
    Entry(
        name="StableMaxHead",
        make_module_and_data=lambda: (with_stablemax_head(UserCNN()), UserImageData()),
        expect_logged=("train/loss",),
    ),
    Entry(
        name="HardConstraintMoE",
        variant="pde-data-parallel",
        make_module_and_data=lambda: pde_pair(expert_parallel=False, overlap=1),
        expect_logged=("train/interface_jump", "train/lm_iterations"),
        ddp_atol=1e-10,
    ),
    Entry(
        name="HardConstraintMoE",
        variant="pde-interface-rows",
        make_module_and_data=lambda: pde_pair(expert_parallel=False, interface_rows=True),
        expect_logged=("train/interface_jump",),
        ddp_atol=1e-10,
    ),
    Entry(
        name="ExpertParallelStrategy",
        make_module_and_data=lambda: pde_pair(expert_parallel="auto"),
        expect_logged=("train/interface_jump", "train/solve_ms"),
        make_ddp_strategy=lambda: ExpertParallelStrategy(
            start_method="spawn", process_group_backend="gloo"
        ),
        # A DDP strategy itself; FSDP2 gives each rank its own data, which expert parallelism
        # cannot take (HardConstraintMoE with expert_parallel=False trains under FSDP2).
        fsdp_refused=(
            "ModelParallelStrategy gives each rank its own shard of the data. Train with "
            "lightning_dyn.strategies.ExpertParallelStrategy, or pass expert_parallel=False for "
            "data parallelism (DDP, FSDP2)"
        ),
        ddp_atol=1e-10,
    ),
]


def pde_pair(batch_size: int = 4, **moe: Any) -> tuple[PDEModule, PDEDataModule]:
    """The pde recipe at toy size, K=2 experts in space, full batch (2 per rank under DDP)."""
    grid = {"n_x": 16, "n_t": 9}
    problem = {"problem": "burgers"}  # given: the network exists before fit (frozen, compiled)
    options = {"constraint": "moe", "experts": 2, "partition": (1, 2), **moe}
    module = PDEModule(n_basis=4, width=16, figure=False, **problem, **grid, **options)
    return module, PDEDataModule(**grid, n_train=4, n_val=2, batch_size=batch_size)


def with_stablemax_head(module: UserCNN) -> UserCNN:
    """A user swaps their classifier for a StableMax head and trains on its loss."""
    module.classifier = StableMaxHead(module.classifier.in_features, module.classifier.out_features)
    module.criterion = module.classifier.loss
    return module


def _label_groups(indices: torch.Tensor, batch: Any) -> torch.Tensor:
    """Groups by label: a ``group_fn`` as a user would write it."""
    return batch[1]


def exported_names() -> set[str]:
    """Every public callback, optimizer and strategy class the package exports."""
    names = set()
    packages = (
        (lightning_dyn.callbacks, pl.Callback),
        (lightning_dyn.optim, Optimizer),
        (lightning_dyn.strategies, Strategy),
    )
    for package, base in packages:
        for name in package.__all__:
            obj = getattr(package, name)
            if isinstance(obj, type) and issubclass(obj, base):
                names.add(name)
    return names


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call in memory (rank 0 only, like every Lightning logger)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.records.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def keys(self) -> set[str]:
        return {key for _, metrics in self.records for key in metrics}


def quiet_trainer(root: Path, max_steps: int, **kwargs: Any) -> pl.Trainer:
    """A CPU trainer with a :class:`RecordingLogger`, logging every step, nothing printed.

    Validation runs every epoch (every step for full-batch data); checkpointing is on only when
    a ``ModelCheckpoint`` is among the callbacks.
    """
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "max_epochs": -1,
        "logger": RecordingLogger(),
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(root),
        **kwargs,
    }
    callbacks = options.get("callbacks", [])
    options["enable_checkpointing"] = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    return pl.Trainer(**options)


def make_trainer(entry: Entry, max_steps: int, root: Path, **kwargs: Any) -> pl.Trainer:
    """:func:`quiet_trainer` with the entry's own Trainer settings."""
    return quiet_trainer(root, max_steps, **{**entry.trainer, **kwargs})


def checkpoint_every(n_steps: int, dirpath: Path) -> ModelCheckpoint:
    """Saves ``step=<n>.ckpt`` every ``n_steps`` optimizer steps, keeping all."""
    return ModelCheckpoint(
        dirpath=dirpath, filename="{step}", every_n_train_steps=n_steps, save_top_k=-1
    )


def parameters_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state, sharded (FSDP2 ``DTensor``) entries gathered into whole tensors."""
    return {k: whole(v).detach().clone() for k, v in module.state_dict().items()}


def whole(t: torch.Tensor) -> torch.Tensor:
    """A ``DTensor``'s whole tensor (a collective: every rank must call it), else ``t``."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def callback_states(trainer: pl.Trainer) -> dict[str, Any]:
    """``state_dict()`` of every callback that is not Lightning's own."""
    return {
        type(c).__name__: c.state_dict()
        for c in trainer.callbacks
        if type(c).__module__.startswith("lightning_dyn")
    }


def assert_same(
    actual: Any, expected: Any, path: str = "", rtol: float = 0.0, atol: float = 0.0
) -> None:
    """Equality of nested dicts/lists/tensors/numbers, with the path of the first miss.

    Exact by default; ``rtol > 0`` compares floats and floating tensors to that relative
    tolerance plus ``atol`` (integers, bools and strings stay exact).
    """
    if isinstance(expected, Mapping):
        assert isinstance(actual, Mapping) and set(actual) == set(expected), path
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}/{key}", rtol, atol)
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{i}]", rtol, atol)
    elif isinstance(expected, torch.Tensor):
        if expected.is_floating_point():  # NaN equals NaN: a diverged run is reproducible too
            close = {"rtol": rtol, "atol": atol} if rtol else {"rtol": 0.0, "atol": 0.0}
            torch.testing.assert_close(actual, expected, equal_nan=True, msg=path, **close)
        else:
            assert torch.equal(actual, expected), f"{path}: {actual} != {expected}"
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual), path
    elif isinstance(expected, float) and rtol:
        close = math.isclose(actual, expected, rel_tol=rtol, abs_tol=atol)
        assert close, f"{path}: {actual} != {expected}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


class RankReport(pl.Callback):
    """Saves what each DDP rank ends with (``rank<r>.pt``), for the parent process to compare:
    parameters, callback states, callback metrics, rank 0's logged records, and a trace of the
    parameters after every batch."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.trace: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_) -> None:
        flat = torch.cat([whole(p.detach()).flatten().double() for p in pl_module.parameters()])
        self.trace.append((float(flat.sum()), float(flat.norm())))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        zero = trainer.is_global_zero and isinstance(trainer.logger, RecordingLogger)
        report: dict[str, Any] = {
            "params": parameters_of(pl_module),
            "states": callback_states(trainer),
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "logged": trainer.logger.keys() if zero else set(),
            "records": trainer.logger.records if zero else [],
            "trace": self.trace,
        }
        torch.save(report, self.directory / f"rank{trainer.global_rank}.pt")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning leaves the process group to the interpreter's exit, where gloo's threads are
        # destroyed while still joinable: the worker then aborts ("terminate called without an
        # active exception", 1 run in 3 here) after training succeeded. Close it in step.
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def read_rank_reports(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two ``RankReport`` files, after checking the ranks ended identical."""
    rank0 = torch.load(directory / "rank0.pt", weights_only=False)
    rank1 = torch.load(directory / "rank1.pt", weights_only=False)
    assert_same(rank1["trace"], rank0["trace"], "rank1 vs rank0 parameters after every batch")
    assert_same(rank1["params"], rank0["params"], "rank1 vs rank0 params")
    return rank0, rank1


def logged_series(
    records: list[tuple[int | None, dict[str, float]]], prefixes: tuple[str, ...] = ("",)
) -> dict[tuple[int | None, str], float]:
    """``{(step, key): value}`` of every logged metric whose key starts with one of ``prefixes``
    (wall times, ``*_ms``, left out: no rerun reproduces them)."""
    return {
        (step, key): float(value)
        for step, metrics in records
        for key, value in metrics.items()
        if key.startswith(prefixes) and not key.endswith("_ms")
    }


def compare_logged(
    actual: dict[tuple[int | None, str], float],
    expected: dict[tuple[int | None, str], float],
    rtol: float,
    atol: float,
    label: str,
) -> float:
    """Assert the same metrics were logged at the same steps, each value within tolerance.

    Returns the largest absolute difference (NaN equals NaN). When ``CONFORMANCE_REPORT`` names a
    file, a line with the label, the largest absolute and relative differences and the number of
    values compared is appended to it.
    """
    assert set(actual) == set(expected), (
        f"{label}: logged keys differ: only in DDP {sorted(set(actual) - set(expected))[:5]}, "
        f"only in 1 process {sorted(set(expected) - set(actual))[:5]}"
    )
    largest = relative = 0.0
    for key, value in expected.items():
        got = actual[key]
        if math.isnan(value) and math.isnan(got):
            continue
        assert math.isclose(got, value, rel_tol=rtol, abs_tol=atol), (
            f"{label}: {key} is {got} under DDP and {value} in one process"
        )
        largest = max(largest, abs(got - value))
        relative = max(relative, abs(got - value) / max(abs(value), atol))
    report = os.environ.get("CONFORMANCE_REPORT")
    if report:
        with open(report, "a") as out:
            out.write(f"{label} abs={largest:.3e} rel={relative:.3e} values={len(expected)}\n")
    return largest


def compare_entry_metrics(entry: Entry, records: list, single_records: list, label: str) -> None:
    """:func:`compare_logged` on the namespaces of ``entry.expect_logged`` (e.g. ``nc/``), with
    the entry's DDP tolerances: what the user sees of a plugin, at every step."""
    namespaces = tuple({key.split("/")[0] + "/" for key in entry.expect_logged})
    if namespaces:
        compare_logged(
            logged_series(records, namespaces),
            logged_series(single_records, namespaces),
            rtol=entry.ddp_rtol,
            atol=max(entry.ddp_state_atol, 1e-7),
            label=label,
        )
