"""NeuralCollapseStatistics against numpy sums over the raw features."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from lightning_dyn.metrics import NeuralCollapseStatistics

# torchmetrics' warning when compute() runs on a metric whose update() was never called.
BEFORE_UPDATE = r".*was called before the ``update`` method.*"


def _data(n: int, k: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=gen)
    features = 3.0 * torch.randn(k, d, generator=gen)[labels] + torch.randn(n, d, generator=gen)
    return features, labels


def _numpy_sums(features, labels, k, shift=None) -> dict[str, np.ndarray]:
    """Per-class count, sum and squared norm, and Σ hhᵀ, by explicit loops in numpy."""
    h = features.numpy().astype(np.float64)
    h = h - (0.0 if shift is None else shift.numpy().astype(np.float64))
    y = labels.numpy()
    d = h.shape[1]
    counts, sums, sq = np.zeros(k), np.zeros((k, d)), np.zeros(k)
    second = np.zeros((d, d))
    for row, c in zip(h, y, strict=True):
        counts[c] += 1
        sums[c] += row
        sq[c] += row @ row
        second += np.outer(row, row)
    return {"counts": counts, "sums": sums, "sq_norms": sq, "second_moment": second}


def _assert_equal_to(stats, reference: dict[str, np.ndarray]) -> None:
    for name, expected in reference.items():
        got = getattr(stats, name).numpy()
        assert got.shape == expected.shape, name
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-9, err_msg=name)


def _measure(metric: NeuralCollapseStatistics, features, labels, batches: int):
    for f, y in zip(features.tensor_split(batches), labels.tensor_split(batches), strict=True):
        metric.update(f, y)
    return metric.unpack(metric.compute())


@pytest.mark.parametrize("shift", [None, "offset"])
def test_compute_after_a_full_pass_equals_numpy_sums(shift) -> None:
    features, labels = _data(90, 4, 5, seed=0)
    c = None if shift is None else torch.linspace(-2.0, 2.0, 5)
    metric = NeuralCollapseStatistics(4, 5, shift=c)
    stats = _measure(metric, features, labels, batches=7)
    _assert_equal_to(stats, _numpy_sums(features, labels, 4, shift=c))
    expected_shift = np.zeros(5) if c is None else c.numpy().astype(np.float64)
    np.testing.assert_array_equal(stats.shift.numpy(), expected_shift)


def test_a_measurement_raises_no_compute_before_update_warning() -> None:
    features, labels = _data(40, 3, 4, seed=1)
    metric = NeuralCollapseStatistics(3, 4)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=BEFORE_UPDATE)
        _measure(metric, features, labels, batches=4)
    with pytest.warns(UserWarning, match=BEFORE_UPDATE):  # the filter does catch it
        NeuralCollapseStatistics(3, 4).compute()


def test_compute_is_not_stale_across_measurements_with_different_data() -> None:
    first, first_labels = _data(30, 3, 4, seed=2)
    second, second_labels = _data(50, 3, 4, seed=3)
    metric = NeuralCollapseStatistics(3, 4)
    _assert_equal_to(_measure(metric, first, first_labels, 3), _numpy_sums(first, first_labels, 3))
    # More batches after a compute(): the cached result must not be returned.
    both = _measure(metric, second, second_labels, 5)
    together = torch.cat([first, second]), torch.cat([first_labels, second_labels])
    _assert_equal_to(both, _numpy_sums(*together, 3))
    metric.reset()
    again = _measure(metric, second, second_labels, 2)
    _assert_equal_to(again, _numpy_sums(second, second_labels, 3))


@pytest.mark.parametrize(("k", "d"), [(1, 3), (3, 1), (1, 1)])
def test_unpack_keeps_the_shapes_of_one_class_or_one_dimension(k: int, d: int) -> None:
    # torchmetrics squeezes one-element results of compute(); unpack restores them.
    features, labels = _data(12, k, d, seed=4)
    stats = _measure(NeuralCollapseStatistics(k, d), features, labels, batches=3)
    _assert_equal_to(stats, _numpy_sums(features, labels, k))
    assert stats.shift.shape == (d,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0, "dim": 3}, r"num_classes must be an integer >= 1; got 0"),
        ({"num_classes": 2, "dim": 1.5}, r"dim must be an integer >= 1; got 1.5"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NeuralCollapseStatistics(**kwargs)
