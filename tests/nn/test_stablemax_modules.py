"""StableMax loss module and head vs the functional layer and closed forms (arXiv 2501.04697)."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_dyn.functional.stablemax import stablemax_cross_entropy
from lightning_dyn.nn import StableMaxCrossEntropyLoss, StableMaxHead

# Exactly 0 and 1 (where careless implementations give wrong or NaN gradients) and magnitudes
# where s(x) spans many orders of magnitude.
ROWS = [
    [-3.0, -0.5, 0.0, 1.0, 7.0],
    [1e4, -1e4, 1.0, -1.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0],
]


def _s(x: float) -> float:
    """Def. 4 of arXiv 2501.04697, in Python floats."""
    return x + 1.0 if x >= 0 else 1.0 / (1.0 - x)


def _closed_form_probs(rows: list[list[float]]) -> np.ndarray:
    return np.array([[_s(v) / math.fsum(_s(u) for u in row) for v in row] for row in rows])


def _signed_log1p_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, **kw: object
) -> torch.Tensor:
    """StableMax CE as softmax CE of ``sign(x) * log1p(|x|)`` (``log s(x)``), in float64."""
    x = logits.double()
    return F.cross_entropy(torch.sign(x) * torch.log1p(x.abs()), target, **kw)


@pytest.mark.parametrize("shape", [(12, 5), (6, 5, 3)], ids=["NC", "NCd"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_loss_module_is_the_functional_and_softmax_of_signed_log1p(
    shape: tuple[int, ...], reduction: str, ignore_index: int
) -> None:
    g = torch.Generator().manual_seed(0)
    logits = 10 * torch.randn(shape, generator=g, dtype=torch.float64)
    logits[0, :5] = torch.tensor(ROWS[1]).view(5, *([1] * (len(shape) - 2)))
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    target[1] = ignore_index
    kw = {"reduction": reduction, "ignore_index": ignore_index}

    loss = StableMaxCrossEntropyLoss(**kw)(logits, target)

    assert torch.equal(loss, stablemax_cross_entropy(logits, target, **kw))
    torch.testing.assert_close(
        loss, _signed_log1p_cross_entropy(logits, target, **kw), rtol=1e-12, atol=1e-12
    )
    if reduction == "none":
        assert loss.shape == target.shape
        assert torch.all(loss[1] == 0)


def test_loss_module_returns_the_logits_dtype_and_reaches_them() -> None:
    logits = torch.tensor(ROWS, requires_grad=True)  # float32
    loss = StableMaxCrossEntropyLoss(dtype=torch.float64)(logits, torch.tensor([4, 0, 2]))
    loss.backward()
    assert loss.dtype == torch.float32
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reduction": "avg"}, r"reduction='avg'.*'none', 'mean', 'sum'"),
        ({"reduction": None}, r"reduction=None"),
        ({"ignore_index": 1.5}, r"ignore_index.*1\.5"),
        ({"ignore_index": True}, r"ignore_index.*True"),
        ({"dtype": torch.int64}, r"dtype=torch.int64.*torch.float64"),
    ],
)
def test_loss_module_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StableMaxCrossEntropyLoss(**kwargs)


def test_repr_names_the_arguments() -> None:
    loss = StableMaxCrossEntropyLoss(reduction="sum", ignore_index=3, dtype=torch.float32)
    assert "reduction='sum', ignore_index=3, dtype=torch.float32" in repr(loss)
    assert "dtype=torch.float64" in repr(StableMaxHead(3, 2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_features": 0, "num_classes": 3}, r"in_features.*0"),
        ({"in_features": 4, "num_classes": 2.5}, r"num_classes.*2\.5"),
        ({"in_features": 4, "num_classes": True}, r"num_classes.*True"),
        ({"in_features": 4, "num_classes": 3, "dtype": torch.int32}, r"dtype=torch.int32"),
    ],
)
def test_head_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StableMaxHead(**kwargs)


def test_head_output_shape() -> None:
    head = StableMaxHead(7, 5)
    assert head(torch.randn(4, 7)).shape == (4, 5)
    assert head(torch.randn(2, 3, 7)).shape == (2, 3, 5)
    assert StableMaxHead(7, 5, bias=False).linear.bias is None


@pytest.mark.parametrize(
    ("logits_dtype", "head_dtype", "rtol"),
    [
        (torch.float64, torch.float64, 1e-12),
        (torch.float32, torch.float64, 1e-6),
        (torch.float32, torch.float32, 1e-6),
    ],
)
def test_head_probs_are_the_closed_form(
    logits_dtype: torch.dtype, head_dtype: torch.dtype, rtol: float
) -> None:
    probs = StableMaxHead(2, 5, dtype=head_dtype).probs(torch.tensor(ROWS, dtype=logits_dtype))

    assert probs.dtype == logits_dtype
    np.testing.assert_allclose(probs.double().numpy(), _closed_form_probs(ROWS), rtol=rtol)
    np.testing.assert_allclose(probs.double().sum(-1).numpy(), 1.0, rtol=rtol)


@pytest.mark.parametrize("head_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_head_loss_is_the_functional(head_dtype: torch.dtype, reduction: str) -> None:
    head = StableMaxHead(6, 5, dtype=head_dtype)
    logits = head(torch.randn(8, 6))
    target = torch.tensor([0, 1, 2, 3, 4, -100, 1, 2])
    expected = stablemax_cross_entropy(logits, target, reduction, dtype=head_dtype)
    assert torch.equal(head.loss(logits, target, reduction), expected)


@pytest.mark.parametrize("head_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("row", [ROWS[0], ROWS[1], [1.0, 1.0, 1.0, 1.0, 1.0]])
def test_head_gradients_are_finite_and_exact_at_1_and_1e4(
    head_dtype: torch.dtype, row: list[float]
) -> None:
    # Zero weights make every logit row equal the bias, so the bias gradient has a closed form:
    # d/dz_i [log sum_j s(z_j) - log s(z_y)] = (p_i - [i == y]) * (log s)'(z_i), and
    # (log s)'(z) = 1 / (1 + |z|) on both branches of s.
    head = StableMaxHead(3, 5, dtype=head_dtype)  # float32 parameters
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.copy_(torch.tensor(row))
    y = 3
    head.loss(head(torch.randn(4, 3)), torch.full((4,), y)).backward()

    assert torch.isfinite(head.linear.weight.grad).all()
    p = _closed_form_probs([row])[0]
    expected = [(p[i] - (i == y)) / (1 + abs(z)) for i, z in enumerate(row)]
    np.testing.assert_allclose(head.linear.bias.grad.numpy(), expected, rtol=1e-5, atol=1e-12)


def test_head_trains_a_separable_problem_with_sgd() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centers = 2 * torch.randn(4, 8, generator=g)
    y = torch.arange(64) % 4
    x = centers[y] + 0.5 * torch.randn(64, 8, generator=g)  # (64, 8), 4 separable clusters
    head = StableMaxHead(8, 4)
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    losses = []
    for _ in range(60):
        loss = head.loss(head(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    assert losses[0] > 1.0
    assert losses[-1] < 0.12  # measured: 1.85 -> 0.087
    assert all(b < a for a, b in itertools.pairwise(losses[10:])), "loss went up"
    assert torch.equal(head(x).argmax(-1), y)


def test_head_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    source = StableMaxHead(8, 4, dtype=torch.float32)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    restored = StableMaxHead(8, 4, dtype=torch.float32)
    restored.load_state_dict(torch.load(buffer))

    assert set(source.state_dict()) == {"linear.weight", "linear.bias"}
    x, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 0])
    assert torch.equal(restored(x), source(x))
    assert torch.equal(restored.loss(restored(x), y), source.loss(source(x), y))
    loss_module = StableMaxCrossEntropyLoss()
    assert loss_module.state_dict() == {}
    loss_module.load_state_dict({})
