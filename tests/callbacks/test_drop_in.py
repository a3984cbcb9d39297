"""Dropping the monitors into modules this package did not write: the failures users met.

Each test here reproduces one finding of the drop-in review (it failed before the fix); the
settings matrix itself is ``test_conformance.py``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from harness import quiet_trainer
from user_models import TokenData, UserBoring, UserCNN, UserDictCNN, UserImageData, UserTransformer

from lightning_dyn.callbacks import (
    LayerwiseLRMonitor,
    NeuralCollapseMonitor,
    OutlierPairDetector,
    PerpGrad,
    SharpnessMonitor,
    SoftmaxCollapseMonitor,
)

MONITORS = {
    "SoftmaxCollapseMonitor": lambda: SoftmaxCollapseMonitor(every_n_steps=1),
    "OutlierPairDetector": lambda: OutlierPairDetector(window=4),
    "NeuralCollapseMonitor": lambda: NeuralCollapseMonitor(figure=False),
    "SharpnessMonitor": lambda: SharpnessMonitor(every_n_steps=1),
}
ADAPTER = {
    "SoftmaxCollapseMonitor": "logits_fn",
    "OutlierPairDetector": "logits_fn",
    "NeuralCollapseMonitor": "logits_fn",
    "SharpnessMonitor": "loss_fn",
}


def _fit(module, data, callbacks, root: Path, steps: int = 2) -> pl.Trainer:
    trainer = quiet_trainer(root, steps, callbacks=callbacks)
    trainer.fit(module, datamodule=data)
    return trainer


@pytest.mark.parametrize("name", list(MONITORS))
@pytest.mark.parametrize(
    ("family", "what"),
    [
        ("tensor", "a bare tensor of shape"),
        ("dict", "a dict with keys ['image', 'label']"),
        ("two-argument forward", "forward(batch[0]) and that call failed"),
    ],
)
def test_default_adapters_say_which_argument_to_pass(
    name: str, family: str, what: str, tmp_path: Path
) -> None:
    """Before: ``KeyError: 0``, ``index 1 is out of bounds``, a missing positional argument."""
    module, data = {
        "tensor": (UserBoring(), None),
        "dict": (UserDictCNN(), UserImageData(as_dict=True)),
        "two-argument forward": (UserTransformer(), TokenData()),
    }[family]
    with pytest.raises(TypeError) as caught:
        _fit(module, data, [MONITORS[name]()], tmp_path, steps=4)  # NC: one BoringModel epoch
    message = str(caught.value)
    assert (
        message.startswith(name) and what in message and f"pass {ADAPTER[name]}=" in message.lower()
    )


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: PerpGrad(param_filter="lambda n, p: p.ndim > 1"),
            "param_filter must be a callable",
        ),
        (lambda: PerpGrad(rescale="no"), "rescale must be True or False; got 'no'"),
        (lambda: SoftmaxCollapseMonitor(logits_fn="my.fn"), "logits_fn must be a callable"),
        (lambda: NeuralCollapseMonitor(figure=1), "figure must be True or False"),
        (lambda: OutlierPairDetector(group_fn="label"), "group_fn must be a callable"),
        (lambda: OutlierPairDetector(loss_fn=3), "loss_fn must be a callable"),
        (lambda: OutlierPairDetector(loss_fn="cross_entropy"), "loss_fn='cross_entropy' is not"),
        (lambda: SharpnessMonitor(smallest="yes"), "smallest must be True or False"),
        (lambda: SharpnessMonitor(loss_fn=3), "loss_fn must be a callable"),
        (lambda: LayerwiseLRMonitor(heatmap="off"), "heatmap must be True or False"),
    ],
)
def test_bad_arguments_are_refused_at_construction(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


class _UnusedParameter(UserCNN):
    """A user's module with a parameter no loss uses (a head kept for later)."""

    def __init__(self) -> None:
        super().__init__(optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=1e-3))
        self.spare = torch.nn.Linear(4, 4)


def test_sharpness_with_adam_and_a_parameter_without_gradient_logs_the_threshold(
    tmp_path: Path,
) -> None:
    """Before: Adam keeps no state for the unused parameter and the threshold was never logged."""
    trainer = _fit(
        _UnusedParameter(), UserImageData(), [SharpnessMonitor(every_n_steps=2)], tmp_path, 4
    )
    logged = trainer.logger.keys()
    for key in ("threshold", "ratio", "preconditioned_lambda_1"):
        assert f"sharpness/{key}" in logged, sorted(logged)


def test_sharpness_ratio_against_a_dense_preconditioned_hessian_with_an_unused_parameter(
    tmp_path: Path,
) -> None:
    """The unused parameter (zero Hessian block, step size 0) changes no eigenvalue: the
    preconditioned sharpness equals the one of the used parameters alone."""
    module = _UnusedParameter()
    with_spare = SharpnessMonitor(every_n_steps=4, tol=1e-6)
    _fit(module, UserImageData(), [with_spare], tmp_path, 4)
    used = [p for n, p in module.named_parameters() if not n.startswith("spare")]
    optimizer = module.trainer.optimizers[0]
    from lightning_dyn.callbacks._optimizer_scaling import optimizer_scaling
    from lightning_dyn.functional.hvp import HessianOperator, measuring

    scaling, _ = optimizer_scaling(optimizer, used)
    root = torch.cat([s.reshape(-1) for s in scaling.steps]).sqrt().double()
    x, y = UserImageData().x, UserImageData().y
    with measuring(module):
        op = HessianOperator(
            module, lambda f, b: F.cross_entropy(f(b[0]), b[1]), [(x, y)], used, dtype=torch.float64
        )
        dense = torch.stack([op.matvec(e) for e in torch.eye(op.dim, dtype=torch.float64)])
    scaled = root[:, None] * dense * root[None, :]
    expected = float(torch.linalg.eigvalsh((scaled + scaled.T) / 2)[-1]) / scaling.threshold
    logged = float(module.trainer.callback_metrics["sharpness/ratio"])
    assert logged == pytest.approx(expected, rel=1e-3)


def test_sharpness_at_learning_rate_zero_logs_ratio_zero(tmp_path: Path) -> None:
    """A warm-up that starts at 0: before, 2/η divided by zero inside the monitor."""
    trainer = _fit(UserCNN(lr=0.0), UserImageData(), [SharpnessMonitor(every_n_steps=1)], tmp_path)
    assert float(trainer.callback_metrics["sharpness/ratio"]) == 0.0
    logged = set(trainer.logger.keys())
    assert "sharpness/ratio" in logged and "sharpness/threshold" not in logged


class _CompiledCNN(UserCNN):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.compile(self.features, backend="aot_eager")


@pytest.mark.parametrize("method", ["double_backward", "forward_over_reverse"])
def test_sharpness_of_a_compiled_submodule_equals_the_eager_one(
    method: str, tmp_path: Path
) -> None:
    """Before: AOTAutograd's "does not currently support double backward". The measurement runs
    the compiled submodule's eager original (same parameters): the same λ_1 as an eager model,
    and the compiled module is back in place afterwards."""
    values = []
    for cls in (UserCNN, _CompiledCNN):
        pl.seed_everything(0, verbose=False)  # compiling draws no random numbers: same weights
        module = cls()
        monitor = SharpnessMonitor(every_n_steps=1, tol=1e-6, method=method)
        trainer = _fit(module, UserImageData(), [monitor], tmp_path, 1)
        values.append(float(trainer.callback_metrics["sharpness/lambda_1"]))
    assert type(module.features).__name__ == "OptimizedModule"
    assert values[1] == pytest.approx(values[0], rel=1e-5)


@pytest.mark.ddp
@pytest.mark.parametrize("name", ["SoftmaxCollapseMonitor", "OutlierPairDetector", "Sharpness"])
def test_a_probe_smaller_than_the_world_is_refused_at_setup(name: str, tmp_path: Path) -> None:
    """Before: ``IndexError`` on the rank whose share of the probe was empty."""
    monitor = {
        "SoftmaxCollapseMonitor": lambda: SoftmaxCollapseMonitor(probe_size=1),
        "OutlierPairDetector": lambda: OutlierPairDetector(probe_size=1, window=4),
        "Sharpness": lambda: SharpnessMonitor(probe_size=1),
    }[name]()
    trainer = quiet_trainer(tmp_path, 2, callbacks=[monitor], strategy="ddp_spawn", devices=2)
    with pytest.raises(Exception, match="fewer than the 2 ranks"):
        trainer.fit(UserCNN(), datamodule=UserImageData())


def test_monitors_warn_once_and_log_nan_when_the_model_diverges(tmp_path: Path) -> None:
    """Before: one raised, one warned, two logged NaN silently, NC died inside linalg.svd."""

    class Blowup(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, *_):
            if trainer.global_step == 1:
                with torch.no_grad():
                    pl_module.classifier.weight.fill_(math.inf)

    monitors = [factory() for factory in MONITORS.values()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(UserCNN(), UserImageData(), [Blowup(), *monitors], tmp_path, 4)
    assert trainer.global_step == 4
    for monitor in monitors:
        name = type(monitor).__name__
        mine = [str(w.message) for w in caught if str(w.message).startswith(name)]
        assert len(mine) == 1 and "at step" in mine[0], (name, mine)
        assert monitor.state_dict()["diverged_at_step"] >= 1
