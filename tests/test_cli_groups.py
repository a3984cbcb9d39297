"""The config groups a Lightning user expects: lr_scheduler, debug, and ``lightning-dyn eval``."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
from test_cli_workflow import _check_fails_without_torch, _command

NO_CKPT = ["checkpoint_every_n_steps=null", "logger=csv"]


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    with metrics.open() as handle:
        return list(csv.DictReader(handle))


def _train_in_process(run_dir: Path, *overrides: str) -> dict:
    """Compose the packaged config as the command does and train in this process (no
    interpreter start-up per run); the summary."""
    from hydra import compose, initialize_config_module

    from lightning_dyn._config_checks import config_errors
    from lightning_dyn._run import train

    with initialize_config_module("lightning_dyn.configs", version_base="1.3"):
        cfg = compose("train", [*overrides, *NO_CKPT, f"run_dir={run_dir}"])
    assert config_errors(cfg) == []
    return train(cfg)


def test_a_warmup_cosine_schedule_sets_every_steps_learning_rate(tmp_path: Path) -> None:
    schedule = ["lr_scheduler=warmup_cosine", "lr_scheduler.warmup_steps=4"]
    args = ["experiment=smoke", "trainer.max_steps=10", "callbacks=[lr_monitor]", *schedule]
    _train_in_process(tmp_path, *args, "trainer.enable_progress_bar=false")
    logged = [float(row["lr"]) for row in _csv_rows(tmp_path) if row.get("lr")]
    # grokking's AdamW at lr 0.01: warm-up over 4 steps, cosine to 0.1 of it at step 10.
    expected = [
        0.01 * ((k + 1) / 4 if k < 4 else 0.1 + 0.9 * (1 + math.cos(math.pi * (k - 4) / 6)) / 2)
        for k in range(10)
    ]
    assert logged == pytest.approx(expected, rel=1e-6)


def test_a_schedule_without_a_length_is_refused_before_torch(tmp_path: Path) -> None:
    error = _check_fails_without_torch(tmp_path, "lr_scheduler=cosine", "trainer.max_steps=-1")
    assert "lr_scheduler.total_steps=-1" in error and "set trainer.max_steps" in error
    error = _check_fails_without_torch(tmp_path, "lr_scheduler=warmup_cosine", "debug=profiler")
    assert "lr_scheduler.warmup_steps=100 must be below its total_steps=50" in error


@pytest.mark.parametrize("debug", ["fast_dev_run", "overfit", "profiler"])
def test_each_debug_mode_runs(tmp_path: Path, debug: str) -> None:
    steps = [] if debug == "fast_dev_run" else ["trainer.max_steps=4"]
    quiet = ["trainer.enable_progress_bar=false"]
    summary = _train_in_process(tmp_path, "experiment=smoke", f"debug={debug}", *steps, *quiet)
    assert summary["steps"] == (1 if debug == "fast_dev_run" else 4)
    if debug == "profiler":
        (report,) = tmp_path.glob("*profile*.txt")
        assert "run_training_epoch" in report.read_text()


def test_eval_validates_a_checkpoint_with_its_runs_own_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train = ["experiment=smoke", "trainer.max_steps=6", "checkpoint_every_n_steps=6", "logger=csv"]
    # A setting the eval must take from the run's config, not from the packaged defaults.
    train.append("recipe.module.hidden_sizes=[24,24]")
    done = _command(*train, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = json.loads((run_dir / "summary.json").read_text())

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    evaluated_dir = tmp_path / "eval"
    done = _command("eval", f"ckpt_path={ckpt}", f"hydra.run.dir={evaluated_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lightning-dyn eval (validate): recipe=grokking" in done.stdout
    evaluated = json.loads((evaluated_dir / "summary.json").read_text())
    assert evaluated["checkpoint step"] == 6
    # The last validation of the training run saw the same weights.
    for key in ("test/acc", "test/loss"):
        assert evaluated[key] == pytest.approx(trained[key], rel=1e-6), key
    assert re.search(r"checkpoint step\s+6", done.stdout)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("eval",), "task=validate evaluates a checkpoint: give ckpt_path="),
        (("task=tset",), "task='tset': must be fit, validate or test; did you mean test"),
    ],
)
def test_eval_mistakes_are_answered_before_torch(tmp_path, args, expected) -> None:
    assert expected in _check_fails_without_torch(tmp_path, *args)
