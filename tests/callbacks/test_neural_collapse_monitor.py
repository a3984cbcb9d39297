"""NeuralCollapseMonitor and its torchmetrics state against a direct two-pass computation."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from harness import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset
from user_models import UserCNN, UserImageData

from lightning_dyn.callbacks import NeuralCollapseMonitor
from lightning_dyn.functional import class_statistics, nc4, neural_collapse_metrics
from lightning_dyn.metrics import NeuralCollapseStatistics


def _features(n: int = 120, k: int = 4, d: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    feats = torch.randn(k, d, generator=gen)[labels] + 0.3 * torch.randn(n, d, generator=gen)
    return feats, labels


def test_metric_is_identical_for_1_or_37_batches() -> None:
    feats, labels = _features()
    whole = NeuralCollapseStatistics(4, 6)
    whole.update(feats, labels)
    split = NeuralCollapseStatistics(4, 6)
    for f, y in zip(feats.tensor_split(37), labels.tensor_split(37), strict=True):
        split.update(f, y)
    a = whole.unpack(whole.compute())
    b = split.unpack(split.compute())
    ref = class_statistics(feats, labels, 4)
    ma, mb, mr = (neural_collapse_metrics(s) for s in (a, b, ref))
    for key in mr:
        assert ma[key] == pytest.approx(mr[key], rel=1e-12)
        assert mb[key] == pytest.approx(mr[key], rel=1e-12)


class _Recorder(pl.Callback):
    """Keeps the features and logits of the head input over the last training epoch."""

    def __init__(self, every: int) -> None:
        self.every, self.metrics = every, {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if (trainer.current_epoch + 1) % self.every == 0:
            self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_logged_metrics_equal_a_direct_two_pass_computation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module, data = UserCNN(), UserImageData(n=48)
    monitor = NeuralCollapseMonitor(every_n_epochs=2)
    recorder = _Recorder(2)
    trainer = quiet_trainer(tmp_path, 4, callbacks=[monitor, recorder], max_epochs=4)
    trainer.fit(module, train_dataloaders=data.train_dataloader())
    module.load_state_dict(recorder.state)
    module.eval()
    with torch.no_grad():
        h = module.features(data.x).double()
        logits = module.classifier(h.float()).double()
    # Two passes by hand: class means, then centred covariances and the NC formulas.
    k = 3
    means = torch.stack([h[data.y == c].mean(0) for c in range(k)])
    centred = means - means.mean(0)
    sigma_w = sum((h[data.y == c] - means[c]).T @ (h[data.y == c] - means[c]) for c in range(k))
    sigma_w = sigma_w / len(h)
    sigma_b = centred.T @ centred / k
    nc1 = torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, rtol=1e-10)) / k
    nearest = torch.cdist(h, means).argmin(1)
    mismatch = (nearest != logits.argmax(1)).double().mean()
    logged = recorder.metrics
    assert logged["nc/nc1"] == pytest.approx(float(nc1), rel=1e-6)
    assert logged["nc/nc4"] == pytest.approx(float(mismatch), abs=1e-12)
    w = module.classifier.weight.detach().double()
    w_norms = w.norm(dim=1)
    assert logged["nc/equinorm_classifier"] == pytest.approx(
        float(w_norms.std(unbiased=False) / w_norms.mean()), rel=1e-6
    )


class _EveryEpoch(pl.Callback):
    """Keeps the weights after every training epoch (the monitor has measured by then)."""

    def __init__(self) -> None:
        self.states: list[dict] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.states.append({k: v.clone() for k, v in pl_module.state_dict().items()})


def _numpy_nc4(features: np.ndarray, logits: np.ndarray, means: np.ndarray) -> float:
    distances = np.linalg.norm(features[:, None, :] - means[None, :, :], axis=2)
    return float(np.mean(distances.argmin(axis=1) != logits.argmax(axis=1)))


@pytest.mark.parametrize("mode", ["second_pass", "lagged"])
def test_nc4_of_every_measurement_without_compute_before_update_warnings(
    mode: str, tmp_path: Path
) -> None:
    # Each measurement's NC4 against numpy on that epoch's weights (lagged: the means of the
    # epoch before), so a count left over from an earlier measurement would show; and
    # torchmetrics must never warn that compute() ran before update().
    torch.manual_seed(0)
    module, data = UserCNN(), UserImageData(n=48, batch_size=16)
    monitor = NeuralCollapseMonitor(nc4=mode, figure=False)
    keeper = _EveryEpoch()
    trainer = quiet_trainer(tmp_path, 9, callbacks=[monitor, keeper], max_epochs=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r".*was called before the ``update`` method.*")
        trainer.fit(module, train_dataloaders=data.train_dataloader())
    logged = [m["nc/nc4"] for _, m in trainer.logger.records if "nc/nc1" in m and "nc/nc4" in m]
    y = data.y.numpy()
    passes = []
    for state in keeper.states:
        module.load_state_dict(state)
        module.eval()
        with torch.no_grad():
            h = module.features(data.x)
            logits = module.classifier(h)
        h64 = h.double().numpy()
        means = np.stack([h64[y == c].mean(axis=0) for c in range(3)])
        passes.append((h64, logits.double().numpy(), means))
    if mode == "second_pass":
        expected = [_numpy_nc4(h, z, means) for h, z, means in passes]
    else:
        pairs = itertools.pairwise(passes)
        expected = [_numpy_nc4(h, z, before[2]) for before, (h, z, _) in pairs]
    assert len(set(expected)) > 1, "the measurements should differ for this test to bite"
    # Lightning logs in float32; one example of the 48 is 0.02.
    assert logged == pytest.approx(expected, abs=1e-6)


def test_lagged_nc4_uses_the_previous_means_in_one_pass(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module, data = UserCNN(), UserImageData(n=48)
    monitor = NeuralCollapseMonitor(every_n_epochs=1, nc4="lagged", figure=False)
    trainer = quiet_trainer(tmp_path, 3, callbacks=[monitor], max_epochs=3)
    trainer.fit(module, train_dataloaders=data.train_dataloader())
    epochs = [m for _, m in trainer.logger.records if "nc/nc1" in m]
    assert len(epochs) == 3
    assert "nc/nc4" not in epochs[0] and all("nc/nc4" in m for m in epochs[1:])


def test_leaves_train_mode_and_batchnorm_alone_and_writes_the_gram_figure(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    module, data = UserCNN(batch_norm=True), UserImageData(n=48)
    seen: dict = {"checked": 0}

    class Before(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            seen["mean"] = pl_module.features[1].running_mean.clone()

    class After(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            assert pl_module.training
            assert torch.equal(pl_module.features[1].running_mean, seen["mean"])
            seen["checked"] += 1

    callbacks = [Before(), NeuralCollapseMonitor(), After()]
    trainer = quiet_trainer(tmp_path, 2, callbacks=callbacks, max_epochs=2)
    trainer.fit(module, train_dataloaders=data.train_dataloader())
    assert seen["checked"] == 2
    assert sorted((tmp_path / "media" / "nc_gram").glob("*.png"))


def test_validation_loader_and_max_batches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module, data = UserCNN(), UserImageData(n=48)
    val = DataLoader(TensorDataset(data.x, data.y), batch_size=8)
    monitor = NeuralCollapseMonitor(dataloader="val", max_batches=3, figure=False)

    class WithVal(UserCNN):
        def validation_step(self, batch, batch_idx):
            self.log("val/loss", F.cross_entropy(self(batch[0]), batch[1]))

    module = WithVal()
    trainer = quiet_trainer(tmp_path, 1, callbacks=[monitor], max_epochs=1)
    trainer.fit(module, train_dataloaders=data.train_dataloader(), val_dataloaders=val)
    assert "nc/nc1" in trainer.callback_metrics


def test_planted_collapse_reads_zero(tmp_path: Path) -> None:
    # A model whose features are exactly the class's simplex-ETF vertex and whose classifier
    # rows are those vertices: NC1, the ETF distance, NC3 and NC4 are all 0.
    k = 4
    etf = torch.eye(k) - 1.0 / k

    class Planted(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(k, k)
            self.embed.weight.data.copy_(etf)
            self.head = torch.nn.Linear(k, k)
            self.head.weight.data.copy_(etf)
            self.head.bias.data.zero_()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, y):
            return self.head(self.embed(y))

        def training_step(self, batch, batch_idx):
            loss = (self.scale - 1.0) ** 2 + 0.0 * self(batch[0]).sum()
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD([self.scale], lr=0.1)

    labels = torch.arange(40) % k
    loader = DataLoader(TensorDataset(labels, labels), batch_size=40)
    monitor = NeuralCollapseMonitor(figure=False)
    trainer = quiet_trainer(tmp_path, 1, callbacks=[monitor], max_epochs=1)
    trainer.fit(Planted(), train_dataloaders=loader)
    m = {k_: float(v) for k_, v in trainer.callback_metrics.items()}
    assert m["nc/nc1"] < 1e-10 and m["nc/gram_distance"] < 1e-6
    assert m["nc/nc3"] < 1e-10 and m["nc/nc4"] == 0.0
    assert nc4(0, 40) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dataloader": "test"}, r"dataloader='test' is not supported"),
        ({"every_n_epochs": 0}, r"every_n_epochs must be an integer >= 1; got 0"),
        ({"geometry": "cube"}, r"geometry='cube' is not supported"),
        ({"nc4": "third_pass"}, r"nc4='third_pass' is not supported"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NeuralCollapseMonitor(**kwargs)


def test_a_classifier_that_is_not_linear_is_refused(tmp_path: Path) -> None:
    module, data = UserCNN(), UserImageData()
    trainer = quiet_trainer(tmp_path, 1, callbacks=[NeuralCollapseMonitor(classifier="features")])
    with pytest.raises(ValueError, match=r"classifier='features' must name an nn.Linear"):
        trainer.fit(module, train_dataloaders=data.train_dataloader())


def test_measures_on_a_loader_of_unknown_length(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module, data = UserCNN(), UserImageData(n=48)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            for i in range(0, 48, 16):
                yield data.x[i : i + 16], data.y[i : i + 16]

    loader = DataLoader(Stream(), batch_size=None)
    trainer = quiet_trainer(tmp_path, 6, callbacks=[NeuralCollapseMonitor(figure=False)])
    trainer.fit(module, train_dataloaders=loader)
    assert sum("nc/nc1" in m for _, m in trainer.logger.records) == 2
