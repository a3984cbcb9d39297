"""A researcher's next steps with ``lightning-dyn``: sweeps, W&B records, errors, own module."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from lightning_dyn._wandb_records import read_offline_run

SHORT = ["experiment=smoke", "trainer.max_steps=3", "checkpoint_every_n_steps=null"]


def _command(*args: str, cwd: Path, console: bool = False) -> subprocess.CompletedProcess:
    """``python -m lightning_dyn`` or, with ``console``, the installed ``lightning-dyn`` script."""
    script = shutil.which("lightning-dyn") if console else None
    if console and script is None:
        pytest.skip("the lightning-dyn console script is not installed (pip install -e .)")
    head = [script] if console else [sys.executable, "-m", "lightning_dyn"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_SILENT": "true"}
    return subprocess.run(
        [*head, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_a_sweep_gives_one_wandb_run_per_job_with_its_whole_config(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    lrs = ["optimizer.lr=0.001,0.01", f"hydra.sweep.dir={sweep}"]
    done = _command("-m", *SHORT, "logger=wandb", *lrs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [read_offline_run(d) for d in sorted(sweep.glob("*/wandb/offline-run-*"))]
    assert [r["config"]["optimizer.lr"] for r in runs] == [0.001, 0.01]
    assert len({r["id"] for r in runs}) == 2
    assert runs[0]["name"] != runs[1]["name"] and "optimizer.lr=0.01" in runs[1]["name"]
    assert runs[0]["group"] == runs[1]["group"] == f"{tmp_path.name}/sweep"
    for run in runs:  # the whole composed config, not only the module's arguments
        config = run["config"]
        assert config["name"] == "smoke" and config["trainer.max_steps"] == 3
        assert config["recipe.callbacks.perp_grad._target_"] == "lightning_dyn.callbacks.PerpGrad"
        assert config["optimizer._target_"] == "torch.optim.AdamW"
        steps = [row["trainer/global_step"] for row in run["history"] if "train/loss" in row]
        assert steps == [0, 1, 2], "each run holds its own steps once"


def test_two_loggers_at_once_both_record_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = _command(*SHORT, "logger=[csv,wandb]", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    with metrics.open() as f:
        assert sum(1 for row in csv.DictReader(f) if row["train/loss"]) == 3
    (hparams,) = run_dir.glob("csv/version_*/hparams.yaml")
    assert "optimizer.lr: 0.01" in hparams.read_text()
    (wandb_run,) = run_dir.glob("wandb/offline-run-*")
    assert read_offline_run(wandb_run)["name"] == "smoke"
    assert not list(Path.home().glob(".local/share/wandb/artifacts/staging/*" + run_dir.name))


def _check_fails_without_torch(tmp_path: Path, *args: str) -> str:
    """Run the console entry point in a fresh interpreter; return its error, having checked
    that it stopped before torch was imported."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.argv = ["lightning-dyn", *{list(args)!r}]
        from lightning_dyn.cli import main
        try:
            main()
        except SystemExit as stop:
            print("EXIT", stop.code, file=sys.stderr)
        print("TORCH", "torch" in sys.modules)
        """
    )
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert "TORCH False" in done.stdout, done.stdout + done.stderr[-2000:]
    assert "EXIT" in done.stderr and "EXIT 0" not in done.stderr, done.stderr[-2000:]
    return done.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("recipe=nope",), "Available options in 'recipe':\n\tgaussian_mixture"),
        (("trainer.max_stpes=10",), "did you mean trainer.max_steps"),
        (("trainer.max_steps=abc",), "trainer.max_steps='abc' has type str"),
        (("ckpt_path=missing.ckpt",), "ckpt_path='missing.ckpt': no such file"),
        (("callbacks=[nope]",), "Could not find ['nope'] in 'callbacks'"),
        (("optimized_metric=test/acx",), "did you mean test/acc"),
    ],
)
def test_mistakes_are_answered_before_torch_is_imported(tmp_path, args, expected) -> None:
    assert expected in _check_fails_without_torch(tmp_path, *args)


def _readme_section_blocks(heading: str) -> dict[str, str]:
    """The fenced blocks of one README section, by language (python, yaml, bash)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split(heading, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)
    return {language: body for language, body in blocks}


def test_own_module_runs_from_a_config_dir_with_the_console_script(tmp_path: Path) -> None:
    # The README's own blocks, as a user would copy them.
    blocks = _readme_section_blocks("### Bring your own module")
    (tmp_path / "my_models.py").write_text(blocks["python"])
    (tmp_path / "my_configs" / "recipe").mkdir(parents=True)
    (tmp_path / "my_configs" / "recipe" / "regression.yaml").write_text(blocks["yaml"])
    args = blocks["bash"].split()[1:]
    assert args[:2] == ["--config-dir", "my_configs"]
    args += ["trainer.max_steps=8", "checkpoint_every_n_steps=null", "hydra.run.dir=run"]
    done = _command(*args, cwd=tmp_path, console=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lightning-dyn: recipe=regression" in done.stdout
    assert re.search(r"steps\s+8\n", done.stdout) and "train/loss" in done.stdout
    refused = _command(*args, "optimizer=sgd", cwd=tmp_path, console=True)
    assert refused.returncode != 0
    assert "takes no optimizer argument" in refused.stderr


def test_the_trainer_argument_table_is_lightnings_signature() -> None:
    import inspect

    import lightning.pytorch as pl

    from lightning_dyn._config_checks import TRAINER_ARGUMENTS

    names = [n for n in inspect.signature(pl.Trainer.__init__).parameters if n != "self"]
    assert list(TRAINER_ARGUMENTS) == names


def test_the_optuna_example_runs_its_trials_and_reports_the_best(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra")
    search = tmp_path / "search"
    short = ["hydra.sweeper.n_trials=3", "trainer.max_steps=6", "logger=csv"]
    done = _command("hparams_search=grokking_lr", *short, f"hydra.sweep.dir={search}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p.parent for p in search.glob("*/summary.json"))
    assert len(jobs) == 3, "one run directory per trial"
    learning_rates, accuracies = [], []
    for job in jobs:
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        learning_rates.append(float(re.search(r"optimizer.lr=([-+.e\d]+)", overrides)[1]))
        summary = json.loads((job / "summary.json").read_text())
        assert summary["steps"] == 6
        accuracies.append(summary["test/acc"])
    assert len(set(learning_rates)) == 3 and all(1e-3 <= lr <= 1e-1 for lr in learning_rates)
    best = yaml.safe_load((search / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(accuracies))
    best_lr = best["best_params"]["optimizer.lr"]
    assert best_lr == pytest.approx(learning_rates[accuracies.index(max(accuracies))])


def test_hparams_search_without_the_sweeper_says_what_to_install(monkeypatch) -> None:
    import importlib.util

    from lightning_dyn import cli

    assert cli.optuna_missing_error(["recipe=grokking"]) is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    error = cli.optuna_missing_error(["hparams_search=grokking_lr"])
    assert 'pip install "lightning-dyn[optuna]"' in error


@pytest.mark.parametrize(
    "recipe", ["grokking", "tiny_lm", "gaussian_mixture", "opposing_signals", "pde"]
)
def test_optimizer_keys_tune_every_recipes_own_optimizer(recipe: str) -> None:
    from hydra import compose, initialize_config_module
    from hydra.utils import get_class

    from lightning_dyn.recipes._optimizer import recipe_optimizer

    with initialize_config_module("lightning_dyn.configs", version_base="1.3"):
        tuned = compose("train", [f"recipe={recipe}", "optimizer.lr=0.123"])
        replaced = compose("train", [f"recipe={recipe}", "optimizer=sgd", "optimizer.lr=0.5"])
    # The CLI's default is the one the module uses when built in Python with optimizer=None.
    default = recipe_optimizer(recipe)
    assert get_class(tuned.optimizer._target_) is default.func
    assert tuned.optimizer.lr == 0.123 and default.keywords["lr"] != 0.123
    assert replaced.optimizer._target_ == "torch.optim.SGD" and replaced.optimizer.lr == 0.5
