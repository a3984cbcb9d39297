"""MetricCurves: the history it draws is what the loggers received, and the figure reaches them."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import TINY_DATA, TINY_MODULE, checkpoint_every, quiet_trainer
from PIL import Image

from lightning_dyn.callbacks import MetricCurves
from lightning_dyn.recipes import ModularArithmeticDataModule, ModularArithmeticModule

PANELS = {"accuracy": ["train/acc", "test/acc"], "loss": ["*/loss"], "never logged": ["nope/*"]}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"panels": {}}, "non-empty mapping"),
        ({"panels": ["train/acc"]}, "non-empty mapping"),
        ({"panels": {"acc": "train/acc"}}, r"panels\['acc'\] must be a non-empty list"),
        ({"panels": {"acc": [1]}}, "not a string"),
        ({"panels": PANELS, "every_n_steps": 0}, "every_n_steps"),
        ({"panels": PANELS, "max_points": 0}, "max_points"),
        ({"panels": PANELS, "key": ""}, "key must be a non-empty string"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MetricCurves(**kwargs)


def _fit(root: Path, steps: int, callback: MetricCurves, **kwargs) -> object:
    trainer = quiet_trainer(root, steps, callbacks=[callback, *kwargs.pop("callbacks", [])])
    module = ModularArithmeticModule(**TINY_MODULE)
    trainer.fit(module, datamodule=ModularArithmeticDataModule(**TINY_DATA), **kwargs)
    return trainer


def _logged(trainer, key: str) -> list[float]:
    """The values the logger received for ``key``, a repeat of the previous one left out."""
    values = [metrics[key] for _, metrics in trainer.logger.records if key in metrics]
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def test_the_history_is_what_the_logger_received_and_the_figure_is_logged(tmp_path: Path) -> None:
    curves = MetricCurves(PANELS, every_n_steps=3)
    trainer = _fit(tmp_path, 6, curves)
    for key in ("train/acc", "test/acc", "train/loss", "test/loss"):
        steps, values = zip(*curves.history[key], strict=True)
        assert list(values) == pytest.approx(_logged(trainer, key)), key
        assert list(steps) == sorted(set(steps)), "one point per step, in order"
    assert "nope/x" not in curves.history and set(curves.history) >= {"train/acc", "test/loss"}
    images = sorted((tmp_path / "media" / "curves").glob("*.png"))
    assert [p.name for p in images] == ["step_00000003.png", "step_00000006.png"]
    width, height = Image.open(images[-1]).size
    # 2.6 in of height per panel on 6.4 in: two panels, the never-logged one left out.
    assert 0.6 < height / width < 1.0


def test_a_resumed_run_draws_the_whole_run(tmp_path: Path) -> None:
    whole = MetricCurves(PANELS, every_n_steps=100)
    _fit(tmp_path / "whole", 8, whole, callbacks=[checkpoint_every(4, tmp_path / "ckpt")])
    resumed = MetricCurves(PANELS, every_n_steps=100)
    trainer = _fit(tmp_path / "r", 8, resumed, ckpt_path=str(tmp_path / "ckpt" / "step=4.ckpt"))
    assert resumed.history.keys() == whole.history.keys()
    assert resumed.last_seen == whole.last_seen
    # The checkpoint is written after step 4's batch, before its validation, which Lightning
    # does not run again on resume: the resumed run's logger never receives it.
    assert len(_logged(trainer, "test/loss")) == 4, "validations after steps 5-8 only"
    for key, series in whole.history.items():
        for step in range(1, 9):
            if key.startswith("test/") and step == 4:
                continue  # the resumed run holds step 3's validation here
            held = _held(resumed.history[key], step)
            assert held == pytest.approx(_held(series, step)), (key, step)


def _held(series: list[tuple[int, float]], step: int) -> float:
    """The value a series shows at ``step``: its last point at or before it."""
    return [v for s, v in series if s <= step][-1]


def test_a_held_value_is_drawn_to_the_last_step_it_was_seen_at() -> None:
    curves = MetricCurves({"sc": ["sc"]})
    curves.history, curves.last_seen = {"sc": [(1, 0.0), (5, 0.5)]}, {"sc": 9}
    line = curves.figure().axes[0].lines[0]
    assert list(line.get_xdata()) == [1, 5, 9] and list(line.get_ydata()) == [0.0, 0.5, 0.5]


def test_a_long_run_keeps_every_other_point_and_the_last(tmp_path: Path) -> None:
    curves = MetricCurves({"loss": ["train/loss"]}, every_n_steps=100, max_points=4)
    _fit(tmp_path, 9, curves)
    steps = [s for s, _ in curves.history["train/loss"]]
    assert len(steps) <= 4 and steps[-1] == 9 and steps == sorted(steps)
