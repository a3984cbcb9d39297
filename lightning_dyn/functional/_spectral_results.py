"""Results of the spectral functions of ``functional.lanczos``: eigenpairs, trace estimates and
spectral densities (Gauss quadrature rules)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_dyn._checks import check_positive_int, check_real


@dataclass
class EigenResult:
    """Eigenpairs from :func:`hessian_eigenvalues`.

    Attributes:
        values: float64 eigenvalues: ``(k,)`` in descending order for ``which="largest"``,
            ``(k,)`` ascending for ``"smallest"``, and ``(2k,)`` for ``"both"``: the ``k``
            largest in descending order, then the ``k`` smallest in ascending order (so
            ``values[0]`` is the largest and ``values[k]`` the smallest).
        vectors: Unit eigenvectors, one row per value, ``(len(values), dim)`` in the operator's
            dtype; each is signed so that its largest-magnitude entry is positive.
        num_hvps: Products with the operator made by this call (one per Lanczos iteration).
        converged: Whether every wanted pair met the tolerance (or the Krylov space became the
            whole space, which makes the values exact).
        residuals: float64 ``(len(values),)`` estimates of ``||H u - θ u||`` from the Lanczos
            recurrence, ``|β_m s_{m,i}|``. They leave out rounding error (about ``ε ||H||``),
            so a well-converged pair can read 0.
    """

    values: Tensor
    vectors: Tensor
    num_hvps: int
    converged: bool
    residuals: Tensor


@dataclass
class TraceResult:
    """Stochastic trace estimate from :func:`hessian_trace`.

    Attributes:
        mean: The estimate of ``tr(H)``.
        stderr: Its standard error: the sample standard deviation of the Hutchinson probe values
            over ``sqrt(samples)`` (for Hutch++, of the probes on the complement of the sketch),
            combined in quadrature with, for Hutch++, a bound on the rounding error of the
            exact part (see :func:`hessian_trace`). The probes' rounding is random with the
            probes, so their spread already accounts for it; the exact part's is not.
        num_hvps: Products with the operator made by this call.
        samples: Number of Hutchinson probe values averaged (``samples`` for Hutchinson, the
            last third of the budget for Hutch++, 0 when ``exact``).
        exact: Whether the trace was computed exactly, without probes: Hutch++ on an operator
            of ``dim <= samples // 3``, with ``dim`` products. Its only error is rounding,
            which ``stderr`` then bounds alone.
    """

    mean: float
    stderr: float
    num_hvps: int
    samples: int
    exact: bool = False


@dataclass
class SpectralDensity:
    """Gauss quadrature rules of the spectral measure, from :func:`hessian_spectral_density`.

    Vector ``i``'s rule ``(nodes[i], weights[i])`` integrates polynomials of degree up to
    ``2 * steps - 1`` exactly against ``μ_i = Σ_j (q_i · u_j)² δ(λ_j)`` for its unit start
    vector ``q_i``, and ``E μ_i`` is the spectral density ``(1/dim) Σ_j δ(λ_j)``. A run whose
    Krylov space closed before ``steps`` is padded with nodes equal to its largest node and
    weight 0.

    Attributes:
        nodes: float64 ``(n_vectors, steps)``, Ritz values of each run, ascending.
        weights: float64 ``(n_vectors, steps)``, squared first components of the Ritz vectors;
            each row sums to 1.
        num_hvps: Products with the operator made by this call.
    """

    nodes: Tensor
    weights: Tensor
    num_hvps: int

    def on_grid(self, grid: Tensor, sigma: float) -> Tensor:
        """Density smoothed by a Gaussian of width ``sigma``, averaged over the start vectors.

        Args:
            grid: Points at which to evaluate, any shape.
            sigma: Standard deviation of the Gaussian kernel, ``> 0``; comparable to the grid
                spacing or larger, else the density is a comb of spikes between grid points.

        Returns:
            A float64 CPU tensor shaped like ``grid``; it integrates to 1 over a grid that
            covers the nodes with a margin of a few ``sigma``.
        """
        check_real("sigma", sigma, strictly_positive=True)
        if not isinstance(grid, Tensor):
            raise ValueError(f"grid must be a tensor; got {type(grid).__name__}.")
        t = grid.detach().to("cpu", torch.float64).reshape(-1, 1, 1)
        z = (t - self.nodes.reshape(1, *self.nodes.shape)) / sigma
        kernel = torch.exp(-0.5 * z.square()) / (sigma * math.sqrt(2 * math.pi))
        density = (kernel * self.weights).sum(dim=2).mean(dim=1)
        return density.reshape(grid.shape)

    def moment(self, p: int) -> float:
        """Average over start vectors of ``Σ w θ^p``, an unbiased estimate of ``tr(H^p) / dim``.

        Exact for each vector (``q_i · H^p q_i``) when ``p <= 2 * steps - 1``, so the only error
        is the randomness of the start vectors.

        Args:
            p: Non-negative integer power.
        """
        check_positive_int("p", p, minimum=0)
        return float((self.weights * self.nodes.pow(p)).sum(dim=1).mean())
