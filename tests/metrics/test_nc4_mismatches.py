"""NC4Mismatches against a numpy nearest-class-mean rule, over one or two measurements."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from lightning_dyn.functional import class_means, nc4
from lightning_dyn.metrics import NC4Mismatches, NeuralCollapseStatistics

BEFORE_UPDATE = r".*was called before the ``update`` method.*"


def _data(n: int, seed: int, k: int = 4, d: int = 5):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=gen)
    features = 2.0 * torch.randn(k, d, generator=gen)[labels] + torch.randn(n, d, generator=gen)
    logits = features @ torch.randn(d, k, generator=gen)
    return features, labels, logits


def _numpy_counts(features, logits, means) -> tuple[int, int]:
    """Disagreements of argmax logits and nearest mean (Euclidean distances by loops)."""
    h, z, mu = (t.numpy().astype(np.float64) for t in (features, logits, means))
    mismatches = 0
    for row, scores in zip(h, z, strict=True):
        nearest = int(np.argmin([np.linalg.norm(row - m) for m in mu]))
        mismatches += int(nearest != int(np.argmax(scores)))
    return mismatches, len(h)


def _numpy_means(features, labels, k: int = 4) -> torch.Tensor:
    h, y = features.numpy().astype(np.float64), labels.numpy()
    return torch.from_numpy(np.stack([h[y == c].mean(axis=0) for c in range(k)]))


def _count(metric: NC4Mismatches, features, logits, batches: int) -> tuple[int, int]:
    for f, z in zip(features.tensor_split(batches), logits.tensor_split(batches), strict=True):
        metric.update(f, z)
    mismatches, count = metric.compute()
    assert mismatches.dtype == count.dtype == torch.int64
    return int(mismatches), int(count)


def test_counts_equal_the_numpy_nearest_mean_rule() -> None:
    features, labels, logits = _data(120, seed=0)
    means = _numpy_means(features, labels)
    expected = _numpy_counts(features, logits, means)
    assert 0 < expected[0] < expected[1]  # some agree, some do not: a real test
    assert _count(NC4Mismatches(means), features, logits, batches=9) == expected


def test_a_two_pass_measurement_gives_the_reference_without_warnings() -> None:
    # Pass one: class statistics -> means. Pass two: NC4 against them. As the monitor does.
    features, labels, logits = _data(96, seed=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=BEFORE_UPDATE)
        statistics = NeuralCollapseStatistics(4, 5)
        for f, y in zip(features.split(32), labels.split(32), strict=True):
            statistics.update(f, y)
        means = class_means(statistics.unpack(statistics.compute()))
        counts = _count(NC4Mismatches(means), features, logits, batches=3)
    np.testing.assert_allclose(means.numpy(), _numpy_means(features, labels).numpy(), rtol=1e-12)
    expected = _numpy_counts(features, logits, _numpy_means(features, labels))
    assert counts == expected
    assert nc4(*counts) == pytest.approx(expected[0] / expected[1], abs=0.0)


def test_nc4_count_is_not_stale_across_measurements_with_different_data() -> None:
    first, _, first_logits = _data(40, seed=2)
    second, _, second_logits = _data(70, seed=3)
    means = _numpy_means(*_data(200, seed=4)[:2])
    metric = NC4Mismatches(means)
    m1, n1 = _numpy_counts(first, first_logits, means)
    m2, n2 = _numpy_counts(second, second_logits, means)
    assert _count(metric, first, first_logits, batches=2) == (m1, 40)
    # Updates after a compute() clear its cached result: the counts include the new batches.
    assert _count(metric, second, second_logits, batches=3) == (m1 + m2, n1 + n2)
    metric.reset()
    assert _count(metric, second, second_logits, batches=1) == (m2, 70)
    # A new measurement against other means counts afresh.
    other = NC4Mismatches(_numpy_means(*_data(200, seed=5)[:2]))
    assert _count(other, first, first_logits, batches=1)[1] == 40


@pytest.mark.parametrize("means", [torch.zeros(4), torch.zeros(0, 3), [[0.0, 1.0]]])
def test_means_must_be_a_matrix(means) -> None:
    with pytest.raises(ValueError, match=r"means must be a \(K, D\) tensor of class means"):
        NC4Mismatches(means)
