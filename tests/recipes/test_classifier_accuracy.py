"""The recipes' logged accuracy (torchmetrics) against numpy on the batches the steps saw."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from harness import (
    TINY_DATA,
    TINY_MODULE,
    RankReport,
    compare_logged,
    logged_series,
    quiet_trainer,
    read_rank_reports,
)

from lightning_dyn.recipes import (
    GaussianMixtureDataModule,
    GaussianMixtureModule,
    ModularArithmeticDataModule,
    ModularArithmeticModule,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# lr 0: the weights never move, so the accuracy of any batch can be recomputed after the fit.
FROZEN = functools.partial(torch.optim.SGD, lr=0.0)


class _Batches(pl.Callback):
    """Keeps every training batch, in order."""

    def __init__(self) -> None:
        self.batches: list = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches.append([t.clone() for t in batch])


def _numpy_accuracy(module: pl.LightningModule, inputs, labels) -> float:
    with torch.no_grad():
        logits = module(inputs).double().numpy()
    return float(np.mean(logits.argmax(axis=1) == labels.numpy()))


def _logged(trainer: pl.Trainer, key: str) -> list[float]:
    return [m[key] for _, m in trainer.logger.records if key in m]


def test_gaussian_mixture_logs_batch_and_validation_set_accuracy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # 24 training examples in batches of 7 (the last one of 3), 6 validation examples.
    data = GaussianMixtureDataModule(num_classes=3, input_dim=4, per_class=8, batch_size=7)
    module = GaussianMixtureModule(num_classes=3, input_dim=4, width=8, depth=1, optimizer=FROZEN)
    batches = _Batches()
    trainer = quiet_trainer(tmp_path, 8, callbacks=[batches], max_epochs=2)
    trainer.fit(module, datamodule=data)
    expected = [_numpy_accuracy(module, x, y) for x, y in batches.batches]
    assert [len(y) for _, y in batches.batches] == [7, 7, 7, 3] * 2
    assert len(set(expected)) > 1, "the batches should differ for this test to bite"
    assert _logged(trainer, "train/acc") == pytest.approx(expected, abs=1e-6)
    val = _numpy_accuracy(module, *data.val_set.tensors)
    assert _logged(trainer, "val/acc") == pytest.approx([val, val], abs=1e-6)


def test_modular_arithmetic_logs_train_and_held_out_accuracy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = ModularArithmeticDataModule(**{**TINY_DATA, "batch_size": 20, "eval_batch_size": 25})
    module = ModularArithmeticModule(**TINY_MODULE, optimizer=FROZEN)
    batches = _Batches()
    trainer = quiet_trainer(tmp_path, 4, callbacks=[batches], max_epochs=1)
    trainer.fit(module, datamodule=data)
    expected = [_numpy_accuracy(module, x, y) for x, y in batches.batches]
    assert [len(y) for _, y in batches.batches] == [20, 20, 20, 12]
    assert _logged(trainer, "train/acc") == pytest.approx(expected, abs=1e-6)
    # The held-out set in batches of 25, 25 and 22: the accuracy of the whole set.
    held_out = _numpy_accuracy(module, *data.val_set.tensors)
    assert 0 < held_out < 1
    assert _logged(trainer, "test/acc") == pytest.approx([held_out], abs=1e-6)
    (tested,) = trainer.test(module, datamodule=data, verbose=False)
    assert tested["test/acc"] == pytest.approx(held_out, abs=1e-6)


def _single_and_ddp(tmp_path: Path, build, steps: int) -> tuple[pl.Trainer, dict, list]:
    """One process, then 2-process DDP, on what ``build()`` returns: the single trainer, its
    data module, and rank 0's logged records (after checking that the ranks agree)."""
    module, data = build()
    single = quiet_trainer(tmp_path, steps)
    single.fit(module, datamodule=data)
    module, ddp_data = build()
    ddp = quiet_trainer(
        tmp_path, steps, strategy="ddp_spawn", devices=2, callbacks=[RankReport(tmp_path)]
    )
    ddp.fit(module, datamodule=ddp_data)
    rank0, _ = read_rank_reports(tmp_path)
    return single, data, rank0["records"]


@pytest.mark.ddp
def test_two_process_ddp_logs_the_one_process_accuracy(tmp_path: Path) -> None:
    # Full batch on two equal halves: the same run as one process, so the same logged accuracy
    # at every step (train: the global batch, test: the whole held-out set).
    def build() -> tuple[pl.LightningModule, pl.LightningDataModule]:
        pl.seed_everything(1234, verbose=False)
        return ModularArithmeticModule(**TINY_MODULE), ModularArithmeticDataModule(**TINY_DATA)

    single, _, records = _single_and_ddp(tmp_path, build, 6)
    keys = ("train/acc", "test/acc")
    expected = logged_series(single.logger.records, keys)
    assert len(expected) == 12 and len({v for (_, k), v in expected.items()}) > 2
    compare_logged(logged_series(records, keys), expected, 1e-6, 1e-7, "recipe accuracy")


@pytest.mark.ddp
def test_two_process_ddp_counts_each_validation_example_once(tmp_path: Path) -> None:
    # 9 validation examples on 2 ranks: 5 + 4, no padding (Lightning's default sampler would
    # evaluate one example twice, 10 in all; its sync_dist epoch mean would divide the summed
    # loss by 4 examples per rank, not 4.5). At lr 0 both runs measure the same weights.
    def build() -> tuple[pl.LightningModule, pl.LightningDataModule]:
        pl.seed_everything(7, verbose=False)
        data = GaussianMixtureDataModule(num_classes=3, input_dim=4, per_class=12, batch_size=None)
        return GaussianMixtureModule(width=8, depth=1, optimizer=FROZEN), data

    single, data, records = _single_and_ddp(tmp_path, build, 2)
    assert len(data.val_set) == 9
    val = _numpy_accuracy(single.lightning_module, *data.val_set.tensors)
    assert 0 < val < 1, "an accuracy strictly between 0 and 1 makes a repeated example show"
    assert _logged(single, "val/acc") == pytest.approx([val, val], abs=1e-6)
    keys = ("val/acc", "val/loss")
    expected = logged_series(single.logger.records, keys)
    compare_logged(logged_series(records, keys), expected, 1e-6, 1e-7, "uneven val")
