"""OutlierPairDetector: scored on the planted recipe, the control, and the Lightning contract."""

from __future__ import annotations

import csv
import functools
import itertools
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from harness import RecordingLogger, quiet_trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset
from user_models import UserCNN, UserImageData

from lightning_dyn.callbacks import OutlierPairDetector
from lightning_dyn.callbacks._probe import Probe, gather_by_position
from lightning_dyn.recipes import OpposingSignalsDataModule, OpposingSignalsModule

# The recipe's defaults (configs/recipe/opposing_signals.yaml): 500 training images, the patch on
# a quarter of classes 0 and 1, full-batch SGD at lr 0.03. The pair starts to oscillate after
# about 120-190 steps (seeds 0-4); 400 steps take about 5 s here.
RECIPE_STEPS = 400


def _run_recipe(tmp_path: Path, planted: bool, seed: int) -> tuple[OutlierPairDetector, object]:
    pl.seed_everything(seed, verbose=False)
    data = OpposingSignalsDataModule(planted=planted, seed=seed)
    module = OpposingSignalsModule()
    detector = OutlierPairDetector(k=32, max_detections=10_000)
    trainer = quiet_trainer(tmp_path, RECIPE_STEPS, callbacks=[detector], limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    return detector, data


@pytest.mark.parametrize("seed", [0, 3])
def test_flags_the_planted_pair_with_high_precision_and_recall(tmp_path: Path, seed: int) -> None:
    detector, data = _run_recipe(tmp_path, planted=True, seed=seed)
    assert detector.detections, "the planted pair was never flagged"
    # One tracked group, the two planted subsets, each side one class.
    assert len(detector.groups) == 1, [g["sizes"] for g in detector.groups]
    group = detector.groups[0]
    for side, planted in zip(group["indices"], (data.planted_a, data.planted_b), strict=True):
        found, truth = set(side), set(planted.tolist())
        assert len(found & truth) >= 0.8 * len(found) and len(found & truth) >= 0.8 * len(truth)
    assert group["grad_cos"] < -0.8 and group["persistence"] > 1
    scores = data.score(detector.flagged_indices())
    assert scores["precision"] >= 0.8, scores
    assert scores["recall"] >= 0.8, scores
    # Each flagged pair is one patched subset against the other: labels differ, gradients oppose.
    for record in detector.detections:
        assert record["pair_grad_cos"] < -0.8 and record["pair_corr"] < -0.5
        targets = {name.rsplit("target ", 1)[1] for name in record["groups"]}
        assert targets == {"0", "1"}, record["groups"]


def test_reports_no_pair_on_the_control(tmp_path: Path) -> None:
    detector, _ = _run_recipe(tmp_path, planted=False, seed=0)
    assert not detector.detections
    assert not detector.groups
    assert detector.summarize(None) == {"opposing groups": "none"}


def _loose(**kwargs) -> OutlierPairDetector:
    options = {"k": 6, "window": 4, "corr_threshold": 0.01, "cos_threshold": 0.0, "min_flips": 0}
    return OutlierPairDetector(**{**options, **kwargs})


def _user_pair(**kwargs) -> tuple[UserCNN, UserImageData]:
    torch.manual_seed(0)
    return UserCNN(**kwargs), UserImageData()


def test_leaves_train_mode_batchnorm_statistics_and_grads_alone(tmp_path: Path) -> None:
    module, data = _user_pair(batch_norm=True)
    detector = _loose()
    seen = {}

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            # The detector ran just before: mode, running statistics and .grad are untouched.
            batchnorm = pl_module.features[1]
            seen.setdefault("training", []).append(pl_module.training)
            seen["mean"] = batchnorm.running_mean.clone()
            seen["grads"] = [p.grad.clone() for p in pl_module.parameters()]

    class Before(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            seen["mean_before"] = pl_module.features[1].running_mean.clone()
            seen["grads_before"] = [p.grad.clone() for p in pl_module.parameters()]

    trainer = quiet_trainer(tmp_path, 8, callbacks=[Before(), detector, Spy()])
    trainer.fit(module, train_dataloaders=data.train_dataloader())

    assert seen["training"] and all(seen["training"])
    assert torch.equal(seen["mean"], seen["mean_before"])
    assert all(torch.equal(a, b) for a, b in zip(seen["grads"], seen["grads_before"], strict=True))
    assert detector._num_detections > 0, "the search never reached the gradient check"


def test_evaluates_once_per_optimizer_step_under_accumulation(tmp_path: Path) -> None:
    module, data = _user_pair()
    loader = DataLoader(TensorDataset(data.x, data.y), batch_size=12)  # 4 micro-batches / epoch
    detector = _loose(every_n_steps=1)
    trainer = quiet_trainer(tmp_path, 6, callbacks=[detector], accumulate_grad_batches=2)
    trainer.fit(module, train_dataloaders=loader)
    # Steps 0 (first micro-batch, before any update), 1, ..., 6: one evaluation each.
    assert detector._evaluations == 7
    assert sorted(set(detector._steps.tolist())) == [3, 4, 5, 6]


def test_memory_is_bounded_by_probe_and_window(tmp_path: Path) -> None:
    module, data = _user_pair()
    detector = _loose(window=5, max_detections=3, probe_size=20, min_group_size=1)
    trainer = quiet_trainer(tmp_path, 30, callbacks=[detector])
    trainer.fit(module, train_dataloaders=data.train_dataloader())
    state = detector.state_dict()
    assert state["losses"].shape == (5, 20)
    assert len(state["detections"]) <= 3
    assert state["num_detections"] > 3  # more were found than are kept


def test_probe_as_indices_or_as_a_loader(tmp_path: Path) -> None:
    module, data = _user_pair()
    by_index = _loose(probe=[1, 5, 7, 9, 11, 20, 30, 40])
    quiet_trainer(tmp_path, 6, callbacks=[by_index]).fit(
        module, train_dataloaders=data.train_dataloader()
    )
    assert by_index._probe.indices.tolist() == [1, 5, 7, 9, 11, 20, 30, 40]
    assert by_index._losses.shape[1] == 8

    probe_loader = DataLoader(TensorDataset(data.x[:10], data.y[:10]), batch_size=3)
    by_loader = _loose(probe=probe_loader)
    quiet_trainer(tmp_path, 6, callbacks=[by_loader]).fit(
        module, train_dataloaders=data.train_dataloader()
    )
    assert by_loader._losses.shape[1] == 10
    with torch.no_grad():
        module.eval()
        expected = torch.nn.functional.cross_entropy(
            module(data.x[:10]), data.y[:10], reduction="none"
        )
    # The last evaluation ran on the final weights.
    torch.testing.assert_close(by_loader._ordered()[0][-1], expected)


def test_writes_a_table_with_pictures_and_a_loss_figure(tmp_path: Path) -> None:
    module, data = _user_pair()
    logger = CSVLogger(tmp_path, name="run")
    trainer = quiet_trainer(tmp_path, 8, callbacks=[_loose()], logger=logger)
    trainer.fit(module, train_dataloaders=data.train_dataloader())
    media = Path(logger.log_dir) / "media"
    tables = sorted((media / "opposing_pairs").glob("*.csv"))
    assert tables and sorted((media / "opposing_loss_curves").glob("*.png"))
    with tables[0].open() as f:
        rows = list(csv.DictReader(f))
    assert rows and all(row["examples"].endswith(".png") for row in rows)
    assert all((tables[0].parent / row["examples"]).is_file() for row in rows)


def test_groups_by_a_user_group_fn(tmp_path: Path) -> None:
    module, data = _user_pair()
    detector = _loose(group_fn=lambda indices, batch: batch[1])
    trainer = quiet_trainer(tmp_path, 10, callbacks=[detector])
    trainer.fit(module, train_dataloaders=data.train_dataloader())
    assert detector.detections
    for record in detector.detections:
        assert all(name.startswith("group ") for name in record["groups"])
        for name, indices in zip(record["groups"], record["indices"], strict=True):
            label = int(name.split()[1])
            assert (data.y[indices] == label).all()


def test_sketched_and_exact_gradient_cosines_agree(tmp_path: Path) -> None:
    cosines = {}
    for sketch in (None, 4096):
        module, data = _user_pair()
        detector = _loose(sketch_dim=sketch)
        quiet_trainer(tmp_path, 8, callbacks=[detector]).fit(
            module, train_dataloaders=data.train_dataloader()
        )
        cosines[sketch] = [r["pair_grad_cos"] for r in detector.detections]
    # Same pairs flagged; a 4096-dimensional sketch keeps cosines to about 1/sqrt(4096).
    assert len(cosines[None]) == len(cosines[4096]) > 0
    for exact, sketched in zip(cosines[None], cosines[4096], strict=True):
        assert abs(exact - sketched) < 0.1


def test_gather_by_position_interleaves_uneven_shards() -> None:
    # 5 probe examples on 2 ranks: rank 0 holds positions 0, 2, 4 and rank 1 holds 1, 3.
    shards = [torch.tensor([0.0, 2.0, 4.0]), torch.tensor([1.0, 3.0])]

    def all_gather(padded: torch.Tensor) -> torch.Tensor:
        other = torch.zeros_like(padded)
        other[: len(shards[1])] = shards[1]
        return torch.stack([padded, other])

    trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(all_gather=all_gather))
    probe = Probe(size=5, indices=torch.arange(5), positions=torch.tensor([0, 2, 4]), batch=None)
    assert gather_by_position(trainer, probe, shards[0]).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 2}, r"window must be an integer >= 3; got 2"),
        ({"window": 4, "min_flips": 3}, r"min_flips must be at most window - 2 = 2.*got 3"),
        ({"k": 0}, r"k must be an integer >= 1; got 0"),
        ({"corr_threshold": 0.0}, r"corr_threshold must be a number in \(0, 1\]; got 0.0"),
        ({"cos_threshold": 1.5}, r"cos_threshold must be a number in \[0, 1\]; got 1.5"),
        ({"sketch_dim": 0}, r"sketch_dim must be an integer >= 1; got 0"),
        ({"probe": "all"}, r"probe must be a list of training-set indices.*got str"),
        (
            {"group_fn": lambda i, b: b[1], "feature_module": "features"},
            r"give group_fn or feature_module, not both",
        ),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OutlierPairDetector(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"feature_module": "nope"}, r"feature_module='nope' is not a submodule of UserCNN"),
        ({"probe": [0, 999]}, r"probe holds indices outside the training set \[0, 48\): \[999\]"),
        ({"group_fn": lambda i, b: b[1][:2]}, r"group_fn must return \(48,\) integer group ids"),
    ],
)
def test_bad_setups_fail_at_the_start_with_a_clear_error(
    tmp_path: Path, kwargs: dict, match: str
) -> None:
    module, data = _user_pair()
    trainer = quiet_trainer(tmp_path, 2, callbacks=[_loose(**kwargs)], logger=RecordingLogger())
    with pytest.raises(ValueError, match=match):
        trainer.fit(module, train_dataloaders=data.train_dataloader())


def test_a_model_without_linear_layers_needs_a_feature_module(tmp_path: Path) -> None:
    class ConvOnly(UserCNN):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = torch.nn.Identity()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(1, 3, 8), torch.nn.Flatten()
            )  # (N, 3) logits

    data = UserImageData()
    trainer = quiet_trainer(tmp_path, 2, callbacks=[_loose()])
    with pytest.raises(ValueError, match=r"no nn.Linear.*feature_module"):
        trainer.fit(ConvOnly(), train_dataloaders=data.train_dataloader())
    detector = _loose(feature_module="features.0")
    trainer = quiet_trainer(tmp_path, 6, callbacks=[detector])
    trainer.fit(ConvOnly(), train_dataloaders=data.train_dataloader())
    assert detector._evaluations == 6


def test_digits_option_trains_offline(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    data = OpposingSignalsDataModule(dataset="digits", num_classes=10)
    data.setup()
    assert data.train_set.tensors[0].shape[1:] == (1, 8, 8)
    patched = data.train_set.tensors[0][data.planted_indices()]
    assert (patched[:, 0, :3, :3] == 12.0).all()
    assert set(data.train_set.tensors[1][data.planted_a].tolist()) == {0}
    optimizer = functools.partial(torch.optim.SGD, lr=0.1)
    trainer = quiet_trainer(tmp_path, 3, limit_val_batches=0)
    trainer.fit(OpposingSignalsModule(num_classes=10, optimizer=optimizer), datamodule=data)
    assert trainer.global_step == 3


def test_report_goes_to_an_offline_wandb_run(tmp_path: Path, monkeypatch) -> None:
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="lightning-dyn-tests", save_dir=str(tmp_path), offline=True)
    module, data = _user_pair()
    detector = _loose()
    trainer = quiet_trainer(tmp_path, 8, callbacks=[detector], logger=logger)
    trainer.fit(module, train_dataloaders=data.train_dataloader())
    run_files = Path(logger.experiment.dir)
    logger.experiment.finish()
    assert detector.detections
    media = run_files / "media"
    assert list((media / "table" / "opposing").glob("pairs_*.table.json"))
    assert list((media / "images" / "opposing").glob("loss_curves_*.png"))
    assert not (tmp_path / "media").exists()


def test_the_loss_figure_shows_both_sides_swing_on_one_scale() -> None:
    from lightning_dyn.callbacks._outlier_report import loss_figure

    steps = list(range(8))
    # A side with a high, falling loss and one 500 times lower, swinging in antiphase; the
    # common descent (0.05 per step) is larger than the low side's swing.
    high = [5.0 - 0.05 * t + 0.1 * (-1) ** t for t in steps]
    low = [0.01 - 0.0005 * t - 0.005 * (-1) ** t for t in steps]
    record = {"step": 7, "steps": steps, "groups": ("A", "B"), "losses": (high, low),
              "pair_corr": -1.0, "pair_grad_cos": -0.9}  # fmt: skip
    lines = loss_figure(record).axes[0].get_lines()[:2]
    a, b = (line.get_ydata() for line in lines)
    # Each side drawn around zero, its linear trend removed: the swings alternate in antiphase
    # at every step, each with its own amplitude (a least-squares line through +-c, 8 points,
    # leaves residuals within c of the swing: +-0.1 -> 0.08..0.12 in magnitude).
    assert abs(sum(a)) < 1e-12 and abs(sum(b)) < 1e-12
    assert all(x * y < 0 for x, y in zip(a, b, strict=True))
    assert all(x * y < 0 for x, y in itertools.pairwise(a))
    assert all(0.05 < abs(x) < 0.15 for x in a) and all(0.0025 < abs(y) < 0.0075 for y in b)


def test_a_checkpoint_from_before_the_tracked_groups_loads() -> None:
    detector = OutlierPairDetector()
    state = detector.state_dict()
    del state["groups"]
    state["first_detection"] = (12, "cluster 0, target 0", "cluster 0, target 1")
    detector.load_state_dict(state)
    assert detector.groups == [] and detector.summarize(None) == {"opposing groups": "none"}
