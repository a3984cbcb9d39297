"""The Lanczos recurrence as a state object: Krylov basis, tridiagonal ``T`` and Simon's ω.

:class:`LanczosRecurrence` holds one run;
:func:`~lightning_dyn.functional.lanczos.hessian_eigenvalues` and
:func:`~lightning_dyn.functional.lanczos.hessian_spectral_density` drive it with ``step`` /
``advance`` / ``restart``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from lightning_dyn.functional._counted_operator import CountedOperator, dot64, norm64

_BREAKDOWN = 100.0
"""A Lanczos ``β <= _BREAKDOWN * ε * ||T||`` is rounding noise: the Krylov space has closed."""


class _Basis:
    """The Lanczos vectors, stored in row blocks of ``_BLOCK`` so that it grows without copies."""

    _BLOCK = 8

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.dim, self.dtype, self.device = dim, dtype, device
        self.size = 0
        self._blocks: list[Tensor] = []

    def append(self, q: Tensor) -> None:
        row = self.size % self._BLOCK
        if row == 0:
            self._blocks.append(
                torch.empty(self._BLOCK, self.dim, dtype=self.dtype, device=self.device)
            )
        self._blocks[-1][row].copy_(q)
        self.size += 1

    def blocks(self) -> Iterator[Tensor]:
        for i, block in enumerate(self._blocks):
            yield block[: min(self._BLOCK, self.size - i * self._BLOCK)]

    def orthogonalize(self, w: Tensor) -> None:
        """Remove from ``w``, in place, its components along every stored vector.

        Classical Gram-Schmidt done twice ("twice is enough", Giraud et al. 2005): orthogonal to
        working precision, with two matrix products per block instead of one per vector.
        """
        for _ in range(2):
            blocks = list(self.blocks())
            coefficients = [block @ w for block in blocks]
            for block, c in zip(blocks, coefficients, strict=True):
                w.sub_(c @ block)

    def combine(self, s: Tensor) -> Tensor:
        """``sᵀ Q``: rows are the combinations of the stored vectors given by the columns of s."""
        out = torch.zeros(s.shape[1], self.dim, dtype=self.dtype, device=self.device)
        for i, block in enumerate(self.blocks()):
            rows = s[i * self._BLOCK : i * self._BLOCK + block.shape[0]]
            out.addmm_(rows.T.to(self.device, self.dtype), block)
        return out


def _tridiagonal_eigh(alphas: list[float], betas: list[float]) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal matrix, float64."""
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(t)


class LanczosRecurrence:
    """One Lanczos run: ``T`` (``alphas`` on the diagonal, ``betas`` off it, float64), the
    current and previous Krylov vectors and, unless ``reorthogonalize="local"``, the basis.

    ``step`` makes one product and leaves the next vector ``w`` and its norm ``beta`` pending;
    ``advance`` accepts ``q_{j+1} = w / β_j``, ``restart`` instead a random unit vector
    orthogonal to the basis with ``β_j = 0`` (for when ``closed``: the Krylov space is invariant).

    ``reorthogonalize``: ``"full"`` and ``"partial"`` as in
    :func:`~lightning_dyn.functional.lanczos.hessian_eigenvalues`; ``"local"`` only against the
    current vector and no basis stored (three vectors of memory, no ``restart``), for stochastic
    Lanczos quadrature.
    """

    def __init__(self, op: CountedOperator, q: Tensor, reorthogonalize: str) -> None:
        self.op = op
        self.reorthogonalize = reorthogonalize
        self.basis = _Basis(op.dim, op.dtype, op.device)
        if reorthogonalize != "local":
            self.basis.append(q)
        self.q = q
        self.q_prev: Tensor | None = None
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.beta = 0.0  # norm of the pending vector
        self.anorm = 0.0  # running estimate of ||T||, the scale of rounding noise
        self._w: Tensor | None = None  # the pending vector, unnormalised
        self._omega_prev = torch.zeros(0, dtype=torch.float64)  # ω_{j-1, k} ≈ q_{j-1} · q_k
        self._omega = torch.ones(1, dtype=torch.float64)  # ω_{j, k}
        self._omega_next: Tensor | None = None
        self._force_next = False

    @property
    def closed(self) -> bool:
        """Whether the pending ``β`` is rounding noise, so that the Krylov space has closed."""
        return self.beta <= _BREAKDOWN * self.op.eps * self.anorm

    def step(self) -> None:
        """One product ``H q_j``: appends ``α_j``; ``w`` and ``β_j`` are left pending."""
        op, q, betas = self.op, self.q, self.betas
        w = op(q)
        alpha = dot64(q, w)
        w.sub_(q, alpha=alpha)
        if self.q_prev is not None and betas[-1] != 0.0:
            w.sub_(self.q_prev, alpha=betas[-1])
        # Local reorthogonalisation against q_j: cheap, and it keeps α accurate.
        correction = dot64(q, w)
        w.sub_(q, alpha=correction)
        alpha += correction
        self.alphas.append(alpha)
        if self.reorthogonalize == "full":
            self.basis.orthogonalize(w)
        beta = norm64(w)
        op.finite(alpha, beta)
        self.anorm = max(self.anorm, abs(alpha) + beta + (betas[-1] if betas else 0.0))
        self._omega_next = None
        if self.reorthogonalize == "partial" and len(self.alphas) < op.dim and beta > 0.0:
            beta = self._partial_reorthogonalize(w, beta)
        self._w, self.beta = w, beta

    def _partial_reorthogonalize(self, w: Tensor, beta: float) -> float:
        """Simon's rule: orthogonalise ``w`` against the basis when some ω estimate exceeds
        ``sqrt(ε)``, and the vector after it too; returns ``β`` after it."""
        eps = self.op.eps
        j = len(self.alphas) - 1
        omega_next = _omega_step(
            self.alphas, self.betas, beta, self._omega, self._omega_prev, eps * self.anorm, eps
        )
        triggered = bool(omega_next[: j + 1].abs().max() > math.sqrt(eps))
        if triggered or self._force_next:
            self.basis.orthogonalize(w)
            beta = norm64(w)
            omega_next[: j + 1] = eps
            self._force_next = not self._force_next
        self._omega_next = omega_next
        return beta

    def ritz(self) -> tuple[Tensor, Tensor, Tensor]:
        """Ritz values ``θ`` (ascending) and vectors ``s`` of ``T``, and the residual estimates
        ``|β s_{m,i}|`` with the pending ``β``."""
        theta, s = _tridiagonal_eigh(self.alphas, self.betas)
        return theta, s, self.beta * s[-1].abs()

    def advance(self) -> None:
        """Accept ``q_{j+1} = w / β_j``."""
        self._accept(self._w.div_(self.beta))  # type: ignore[union-attr]

    def restart(self, gen: torch.Generator) -> bool:
        """Accept a random unit vector orthogonal to the basis, with ``β_j = 0``.

        Returns:
            False, accepting nothing, if the basis already spans the space.
        """
        w = self.op.gaussian(gen)
        self.basis.orthogonalize(w)
        self.beta = 0.0
        w_norm = norm64(w)
        if w_norm <= 10 * self.op.eps * math.sqrt(self.op.dim):
            return False
        self._omega_next = None
        self._accept(w.div_(w_norm))
        return True

    def _accept(self, q: Tensor) -> None:
        self.betas.append(self.beta)
        if self.reorthogonalize == "partial":
            omega_next = self._omega_next
            if omega_next is None:  # a restart: q is orthogonal to the basis
                omega_next = torch.full((self.basis.size + 1,), self.op.eps, dtype=torch.float64)
                omega_next[-1] = 1.0
            self._omega_prev, self._omega = self._omega, omega_next
        if self.reorthogonalize != "local":
            self.basis.append(q)
        self.q_prev, self.q = self.q, q


def _omega_step(
    alphas: list[float],
    betas: list[float],
    beta: float,
    omega: Tensor,
    omega_prev: Tensor,
    noise: float,
    eps: float,
) -> Tensor:
    """Simon's ω-recurrence: estimates of ``q_{j+1} · q_k`` for ``k <= j+1``.

    ``β_j ω_{j+1,k} = β_k ω_{j,k+1} + (α_k - α_j) ω_{j,k} + β_{k-1} ω_{j,k-1} - β_{j-1} ω_{j-1,k}``
    plus a rounding term of size ``ε ||T||`` with the sign of the rest (the pessimistic choice).
    """
    j = len(alphas) - 1
    out = torch.empty(j + 2, dtype=torch.float64)
    if j > 0:
        a = torch.tensor(alphas, dtype=torch.float64)
        b = torch.tensor(betas, dtype=torch.float64)  # β_0 .. β_{j-1}
        t = b * omega[1 : j + 1] + (a[:j] - a[j]) * omega[:j]
        t[1:] += b[: j - 1] * omega[: j - 1]
        t -= b[j - 1] * omega_prev[:j]
        out[:j] = (t + torch.sign(t) * noise) / beta
    out[j] = eps
    out[j + 1] = 1.0
    return out
