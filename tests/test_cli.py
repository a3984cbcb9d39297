"""The ``lightning-dyn`` command: runs, resumes, rejects bad names with the valid choices."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def _run(tmp_path: Path, *overrides: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m lightning_dyn`` in a clean directory, as a user would call it."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "lightning_dyn", *overrides],
        cwd=cwd or tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _steps_logged(run_dir: Path) -> list[int]:
    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    with metrics.open() as f:
        return sorted({int(row["step"]) for row in csv.DictReader(f) if row["train/loss"]})


def test_smoke_run_prints_its_summary_and_keeps_a_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = _run(tmp_path, "experiment=smoke", "logger=csv", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lightning-dyn: recipe=grokking" in done.stdout
    assert "first step test/acc > 0.99" in done.stdout
    assert f"run dir {run_dir}" in " ".join(done.stdout.split())
    assert _steps_logged(run_dir) == list(range(20))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    resumed = _run(
        tmp_path,
        "experiment=smoke",
        "logger=csv",
        "trainer.max_steps=30",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'resumed'}",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _steps_logged(tmp_path / "resumed") == list(range(20, 30))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("recipe=nope", "Available options in 'recipe':\n\tgaussian_mixture\n\tgrokking"),
        ("callbacks=[nope]", "Available options in 'callbacks':\n\tlayerwise_lr"),
        ("callbacks=[lr_monitor,nope]", "Could not find ['nope'] in 'callbacks'"),
        ("logger=nope", "Available options in 'logger':\n\tcsv\n\twandb"),
        ("recipe.datamodule.op=pow", "op='pow' is not supported; choose one of: 'add'"),
        ("loss=focal", "loss='focal' is not supported; choose one of: 'softmax'"),
    ],
)
def test_bad_names_fail_fast_listing_the_valid_choices(tmp_path, override, expected) -> None:
    done = _run(tmp_path, "experiment=smoke", "logger=csv", override)
    assert done.returncode != 0
    assert expected in done.stderr, done.stderr[-3000:]


def test_a_user_config_dir_adds_recipes(tmp_path: Path) -> None:
    recipes = tmp_path / "my_configs" / "recipe"
    recipes.mkdir(parents=True)
    (recipes / "tiny_sub.yaml").write_text(
        "defaults:\n  - grokking\n  - _self_\nname: tiny_sub\n"
        "datamodule:\n  p: 11\n  op: sub\nmodule:\n  hidden_sizes: [8]\n"
    )
    done = _run(
        tmp_path,
        "--config-dir",
        str(tmp_path / "my_configs"),
        "recipe=tiny_sub",
        "logger=csv",
        "trainer.max_steps=3",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "recipe=tiny_sub" in done.stdout


@pytest.mark.ddp
def test_two_process_ddp_from_the_command_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = _run(
        tmp_path, "experiment=smoke", "logger=csv", "trainer=ddp_cpu", f"hydra.run.dir={run_dir}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^\s*steps\s+20$", done.stdout, re.MULTILINE)
    assert _steps_logged(run_dir) == list(range(20))


def _last_val_loss(run_dir: Path) -> float:
    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    with metrics.open() as f:
        return [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")][-1]


def test_tiny_lm_with_lanton_under_fsdp2_matches_ddp(tmp_path: Path) -> None:
    """FSDP2 (2 CPU processes, fully_shard in configure_model) trains the same model as DDP:
    the validation losses agree within the bf16 noise of LANTON's Newton-Schulz (1e-2)."""
    losses = {}
    for trainer in ("fsdp_cpu", "ddp_cpu"):
        run_dir = tmp_path / trainer
        done = _run(
            tmp_path,
            "recipe=tiny_lm",
            "optimizer=lanton",
            f"trainer={trainer}",
            "trainer.max_steps=20",
            "recipe.datamodule.steps_per_epoch=20",
            "recipe.datamodule.max_chars=200000",
            "logger=csv",
            f"hydra.run.dir={run_dir}",
        )
        assert done.returncode == 0, done.stderr[-3000:]
        losses[trainer] = _last_val_loss(run_dir)
    assert losses["fsdp_cpu"] == pytest.approx(losses["ddp_cpu"], rel=1e-2), losses


def test_lanton_with_its_monitor_from_the_command_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = _run(
        tmp_path,
        "experiment=smoke",
        "logger=csv",
        "optimizer=lanton",
        "callbacks=[layerwise_lr]",
        "trainer.max_steps=20",
        f"hydra.run.dir={run_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    header = metrics.read_text().splitlines()[0]
    assert "layerwise_lr/lr/model.layers.0.weight" in header
    assert list(run_dir.glob("csv/version_*/media/layerwise_lr_heatmap/step_*.png"))


def test_opposing_signals_recipe_reports_its_detector(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = _run(
        tmp_path,
        "recipe=opposing_signals",
        "logger=csv",
        "trainer.max_steps=250",
        "recipe.callbacks.opposing.report_every=1000",
        f"hydra.run.dir={run_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # With the CLI's seed 42 the planted pair is flagged from step 122; one opposing group is
    # tracked and every example in it is a planted one.
    assert re.search(r"detector precision vs planted\s+1$", done.stdout, re.MULTILINE)
    assert re.search(r"opposing groups\s+1, first at step \d+", done.stdout)
    assert re.search(r"largest opposing group\s+cluster", done.stdout)
    assert list(run_dir.glob("csv/version_*/media/opposing_pairs/step_*.csv"))


def test_edge_of_stability_experiment_measures_sharpness(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    run_dir = tmp_path / "run"
    done = _run(
        tmp_path,
        "experiment=edge_of_stability",
        "logger=csv",
        "trainer.max_steps=30",
        f"hydra.run.dir={run_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    with metrics.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("sharpness/lambda_1")]
    assert len(rows) == 3  # steps 10, 20, 30
    assert all(float(r["sharpness/threshold"]) == 20.0 for r in rows)  # 2/η, η = 0.1
    # Progressive sharpening has begun, well below the edge this early.
    lambdas = [float(r["sharpness/lambda_1"]) for r in rows]
    assert lambdas == sorted(lambdas) and 5 < lambdas[0] < 20


def test_neural_collapse_experiment_logs_nc_metrics(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = _run(
        tmp_path,
        "experiment=neural_collapse",
        "logger=csv",
        "trainer.max_steps=200",  # 10 epochs: one measurement
        f"hydra.run.dir={run_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^\s*nc/nc4\s+0$", done.stdout, re.MULTILINE)
    assert list(run_dir.glob("csv/version_*/media/nc_gram/step_*.png"))


# The pde recipe at toy size: K=2 experts (when constraint=moe), a 16 x 9 grid, 4 steps.
TINY_PDE = (
    "recipe.module.partition=[1,2]",
    "recipe.module.experts=2",
    "recipe.datamodule.n_x=16",
    "recipe.datamodule.n_t=9",
    "recipe.datamodule.n_train=8",
    "recipe.module.n_basis=4",
    "logger=csv",
    "trainer.max_steps=4",
)


def test_pde_recipe_runs_each_constraint_arm(tmp_path: Path) -> None:
    for arm in ("soft", "moe"):
        run_dir = tmp_path / arm
        done = _run(
            tmp_path,
            "recipe=pde",
            f"recipe.module.constraint={arm}",
            *TINY_PDE,
            f"hydra.run.dir={run_dir}",
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert re.search(r"^\s*val/rel_l2\s+\d", done.stdout, re.MULTILINE), done.stdout


@pytest.mark.ddp
def test_pde_recipe_splits_experts_over_two_processes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = _run(
        tmp_path,
        "recipe=pde",
        "recipe.problem=diffusion_sorption",
        "recipe.module.constraint=moe",
        *TINY_PDE,
        "trainer=expert_parallel_cpu",
        f"hydra.run.dir={run_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^\s*val/rel_l2\s+\d", done.stdout, re.MULTILINE), done.stdout
    assert list(run_dir.glob("csv/version_*/media/pde_field/step_*.png"))
