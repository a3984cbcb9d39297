"""The conformance matrix (``conformance.py``): each plugin x each setting, as declared."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conformance import (
    CASES,
    DIVERGE_AT_STEP,
    PLUGINS,
    STEPS,
    Plugin,
    Setting,
    backbone,
    build_family,
    compatibility_markdown,
    plugin_model_options,
)
from harness import (
    RankReport,
    compare_logged,
    exported_names,
    logged_series,
    parameters_of,
    quiet_trainer,
    read_rank_reports,
)

import lightning_dyn

DOC = Path(__file__).resolve().parents[1] / "docs" / "compatibility.md"


def _marks(plugin: Plugin, setting: Setting) -> list[Any]:
    return [pytest.mark.ddp] if setting.ddp or plugin.strategy else []


PARAMS = [
    pytest.param(
        plugin,
        setting,
        family,
        id=f"{plugin.name}-{setting.name}-{family}",
        marks=_marks(plugin, setting),
    )
    for plugin, setting, family in CASES
]


class Diverge(pl.Callback):
    """Turns every parameter to NaN before optimizer step ``DIVERGE_AT_STEP``: a blown-up run."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_) -> None:
        if trainer.global_step == DIVERGE_AT_STEP:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(math.nan)


def build(
    plugin: Plugin, setting: Setting, family: str
) -> tuple[pl.LightningModule, Any, list[pl.Callback]]:
    """The user's module, data and callbacks for one cell, seeded alike every call."""
    pl.seed_everything(1234, verbose=False)
    parts = plugin.attach(family)
    model = {**setting.model.get(family, {}), **plugin_model_options(plugin)}
    module, data = build_family(family, parts, model, setting.data.get(family, {}))
    if parts.prepare is not None:
        parts.prepare(module)
    if setting.prepare is not None:
        setting.prepare(module)
    callbacks = ([Diverge()] if setting.diverge else []) + parts.callbacks
    return module, data, callbacks


def fit(module: pl.LightningModule, data: Any, callbacks: list, root: Path, **kwargs: Any):
    trainer = quiet_trainer(root, STEPS, callbacks=callbacks, **kwargs)
    trainer.fit(module, datamodule=data)
    return trainer


def test_every_plugin_has_a_row() -> None:
    """Every exported callback, optimizer and strategy, and every nn plugin, is in the matrix."""
    rows = {plugin.name for plugin in PLUGINS}
    # lightning_dyn.metrics (the metrics behind NeuralCollapseMonitor) is tested through it.
    expected = exported_names() | set(lightning_dyn.nn.__all__)
    assert rows == expected, f"missing: {expected - rows}, unknown: {rows - expected}"


def test_compatibility_doc_is_up_to_date() -> None:
    assert DOC.read_text() == compatibility_markdown(), (
        "docs/compatibility.md is out of date: run `python tests/conformance.py > "
        "docs/compatibility.md`"
    )


@pytest.mark.parametrize(("plugin", "setting", "family"), PARAMS)
def test_conformance(plugin: Plugin, setting: Setting, family: str, tmp_path: Path) -> None:
    kind, reason = plugin.outcome(setting, family)
    if kind == "n/a":
        pytest.skip(f"n/a: {reason}")
    if setting.ddp:
        _check_uneven_ddp(plugin, setting, family, tmp_path)
        return
    if plugin.strategy is not None:
        _check_under_strategy(plugin, setting, family, kind, reason, tmp_path)
        return
    module, data, callbacks = build(plugin, setting, family)
    trainer_options = setting.trainer()
    if kind == "refused":
        trainer = quiet_trainer(tmp_path, STEPS, callbacks=callbacks, **trainer_options)
        with pytest.raises((ValueError, TypeError, RuntimeError), match=re.escape(reason)):
            trainer.fit(module, datamodule=data)
        assert trainer.global_step == 0, "refused after training had started, not at setup"
        return
    frozen_before = _frozen_state(module) if setting.name == "frozen" else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(module, data, callbacks, tmp_path, **trainer_options)
    assert trainer.global_step == STEPS
    values = logged_series(trainer.logger.records, plugin.keys) if plugin.keys else {}
    for prefix in plugin.keys:
        assert any(key.startswith(prefix) for _, key in values), f"{prefix!r} never logged"
    ours = [str(w.message) for w in caught if plugin.name in str(w.message)]
    if setting.diverge:
        if plugin.monitor:
            steps = [int(m) for w in ours for m in re.findall(r"at step (\d+)", w)]
            assert steps and min(steps) >= DIVERGE_AT_STEP, f"no divergence warning: {ours}"
            assert any(math.isnan(v) for v in values.values()), "NaN was not recorded"
        return
    bad = {key: v for key, v in values.items() if not math.isfinite(v)}
    assert not bad, f"non-finite metrics in a run that did not diverge: {bad}"
    assert not [m for m in ours if "diverged" in m], ours
    if frozen_before is not None:
        _assert_frozen(module, frozen_before)


def _frozen_state(module: pl.LightningModule) -> dict[str, Any]:
    return {
        "modes": {name: m.training for name, m in backbone(module).named_modules()},
        "state": parameters_of(backbone(module)),  # weights and BatchNorm running statistics
    }


def _assert_frozen(module: pl.LightningModule, before: dict[str, Any]) -> None:
    modes = {name: m.training for name, m in backbone(module).named_modules()}
    assert modes == before["modes"], "a submodule frozen in eval mode was put back in train mode"
    after = parameters_of(backbone(module))
    moved = [k for k in after if not torch.equal(after[k], before["state"][k])]
    assert not moved, f"the frozen backbone changed: {moved}"


def _check_uneven_ddp(plugin: Plugin, setting: Setting, family: str, tmp_path: Path) -> None:
    """2 processes on an odd dataset vs 1: at learning rate 0 both measure the same parameters,
    so every logged metric must agree, each probe example counted once."""
    module, data, callbacks = build(plugin, setting, family)
    single = fit(module, data, callbacks, tmp_path / "single")
    module, data, callbacks = build(plugin, setting, family)
    callbacks = [*callbacks, RankReport(tmp_path)]
    fit(module, data, callbacks, tmp_path / "ddp", strategy="ddp_spawn", devices=2)
    rank0, _ = read_rank_reports(tmp_path)
    namespaces = tuple({key.split("/")[0] + "/" for key in plugin.keys})
    compare_logged(
        logged_series(rank0["records"], namespaces),
        logged_series(single.logger.records, namespaces),
        rtol=plugin.ddp_rtol,
        atol=1e-6,
        label=f"uneven/{plugin.name}",
    )


def _check_under_strategy(
    plugin: Plugin, setting: Setting, family: str, kind: str, reason: str, tmp_path: Path
) -> None:
    """A strategy plugin: the setting on 2 processes under it; the ranks must end identical."""
    module, data, callbacks = build(plugin, setting, family)
    options = {"strategy": plugin.strategy(), "devices": 2, **setting.trainer()}
    if kind == "refused":
        # The workers raise at setup; the spawn launcher re-raises their traceback here.
        with pytest.raises(Exception, match=re.escape(reason)):
            fit(module, data, callbacks, tmp_path, **options)
        return
    fit(module, data, [*callbacks, RankReport(tmp_path)], tmp_path, **options)
    rank0, _ = read_rank_reports(tmp_path)
    values = logged_series(rank0["records"], plugin.keys)
    for prefix in plugin.keys:
        assert any(key.startswith(prefix) for _, key in values), f"{prefix!r} never logged"
    if not setting.diverge:
        bad = {key: v for key, v in values.items() if not math.isfinite(v)}
        assert not bad, f"non-finite metrics in a run that did not diverge: {bad}"
