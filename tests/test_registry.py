"""Every exported callback/optimizer: trains, fits twice, resumes exactly, runs under DDP."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from harness import (
    REGISTRY,
    Entry,
    RankReport,
    assert_same,
    callback_states,
    checkpoint_every,
    compare_entry_metrics,
    exported_names,
    make_trainer,
    parameters_of,
    read_rank_reports,
)

import lightning_dyn.nn

ENTRIES = [pytest.param(entry, id=entry.id) for entry in REGISTRY]


def test_every_export_has_a_registry_entry() -> None:
    missing = exported_names() - {entry.name for entry in REGISTRY}
    assert not missing, f"exports without a tests/harness.py REGISTRY entry: {sorted(missing)}"
    # Method modules of lightning_dyn.nn may have entries too (trained inside a recipe).
    unknown = {entry.name for entry in REGISTRY} - exported_names() - set(lightning_dyn.nn.__all__)
    assert not unknown, f"REGISTRY entries for names the package does not export: {unknown}"


@pytest.mark.parametrize("entry", ENTRIES)
def test_trains_in_a_real_trainer(entry: Entry, tmp_path: Path) -> None:
    module, data, callbacks = entry.build()
    before = parameters_of(module)
    trainer = make_trainer(entry, 2 * entry.steps, tmp_path, callbacks=callbacks)
    trainer.fit(module, datamodule=data)

    assert trainer.global_step == 2 * entry.steps
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    after = parameters_of(module)
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter moved"
    logged = trainer.logger.keys()
    for key in entry.expect_logged:
        assert any(k.startswith(key) for k in logged), f"{key!r} not logged; got {sorted(logged)}"


@pytest.mark.parametrize("entry", ENTRIES)
def test_survives_a_second_fit(entry: Entry, tmp_path: Path) -> None:
    module, data, callbacks = entry.build()
    first = make_trainer(entry, entry.steps, tmp_path, callbacks=callbacks)
    first.fit(module, datamodule=data)
    # The same callback and model go into a new Trainer, as in a notebook re-run.
    second = make_trainer(entry, 2 * entry.steps, tmp_path, callbacks=callbacks)
    second.fit(module, datamodule=data)

    assert second.global_step == 2 * entry.steps
    assert math.isfinite(float(second.callback_metrics["train/loss"]))
    assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.parametrize("entry", ENTRIES)
def test_resumes_from_a_checkpoint_to_identical_numbers(entry: Entry, tmp_path: Path) -> None:
    module, data, callbacks = entry.build()
    saver = checkpoint_every(entry.steps, tmp_path / "ckpt")
    straight = make_trainer(entry, 2 * entry.steps, tmp_path, callbacks=[*callbacks, saver])
    straight.fit(module, datamodule=data)
    expected_params, expected_states = parameters_of(module), callback_states(straight)
    expected_metrics = _reproducible(straight.callback_metrics)

    # A new process would start from a different random init: the checkpoint must restore it all.
    module, data, callbacks = entry.build()
    torch.nn.init.normal_(next(module.parameters()))
    saver = checkpoint_every(entry.steps, tmp_path / "ckpt")
    resumed = make_trainer(entry, 2 * entry.steps, tmp_path, callbacks=[*callbacks, saver])
    ckpt = tmp_path / "ckpt" / f"step={entry.steps}.ckpt"
    resumed.fit(module, datamodule=data, ckpt_path=ckpt)

    assert resumed.global_step == 2 * entry.steps
    assert_same(parameters_of(module), expected_params, "params")
    assert_same(callback_states(resumed), expected_states, "callbacks")
    assert_same(_reproducible(resumed.callback_metrics), expected_metrics)


def _reproducible(metrics: dict) -> dict[str, float]:
    """Logged metrics without wall times (``*_ms``), which no rerun reproduces."""
    return {k: float(v) for k, v in metrics.items() if not k.endswith("_ms")}


@pytest.mark.ddp
@pytest.mark.parametrize("entry", ENTRIES)
def test_runs_under_two_process_ddp(entry: Entry, tmp_path: Path) -> None:
    steps = 2 * entry.steps
    module, data, callbacks = entry.build()
    single = make_trainer(entry, steps, tmp_path, callbacks=callbacks)
    single.fit(module, datamodule=data)
    single_params, single_states = parameters_of(module), callback_states(single)

    module, data, callbacks = entry.build()
    strategy = entry.make_ddp_strategy() if entry.make_ddp_strategy else "ddp_spawn"
    callbacks = [*callbacks, RankReport(tmp_path)]
    ddp = make_trainer(entry, steps, tmp_path, strategy=strategy, devices=2, callbacks=callbacks)
    ddp.fit(module, datamodule=data)

    rank0, _ = read_rank_reports(tmp_path)
    for key in entry.expect_logged:
        assert any(k.startswith(key) for k in rank0["logged"]), f"{key!r} not logged under DDP"
    if not entry.ddp_matches_single:
        return
    # Full batch on two equal halves averages to the one-process gradient: same run up to
    # floating-point summation order.
    for name, value in single_params.items():
        torch.testing.assert_close(rank0["params"][name], value, rtol=1e-4, atol=entry.ddp_atol)
    assert_same(
        rank0["states"],
        single_states,
        "callback state, DDP vs one process",
        rtol=entry.ddp_rtol,
        atol=entry.ddp_state_atol,
    )
    # What the user sees: every metric the plugin logged, at every step, as in one process.
    compare_entry_metrics(entry, rank0["records"], single.logger.records, f"registry/{entry.id}")
