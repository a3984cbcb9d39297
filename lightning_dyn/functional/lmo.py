"""Linear minimisation oracles (LMOs) and their dual norms, for Muon / Scion / LANTON optimizers.

An optimizer of this family keeps a momentum ``B`` per layer and steps ``X <- X - lr * lmo(B)``
with ``lmo(B) = argmax_{||O|| <= 1} <B, O>`` for a norm chosen per layer: the unit-size steepest
ascent direction, so the minus sign lives in the optimizer (Scion, arXiv 2502.07529, writes the
LMO as the argmin, ``-lmo`` here). ``<B, lmo(B)>`` is the dual norm ``||B||_*``, in which LANTON
(arXiv 2510.14009) measures each layer's gradient noise ``||G_t - G_{t-1}||_*²``.

Weights are ``(d_out, d_in)``, as ``nn.Linear`` stores them; conv kernels ``(d_out, c_in, *kernel)``
are the ``(d_out, c_in * prod(kernel))`` matrix they apply (flattened and reshaped back), as in
KellerJordan/Muon and Scion. Norms in RMS units follow Scion:

- :func:`spectral_lmo`, hidden matrices: RMS→RMS operator norm ``sqrt(d_in/d_out) σ_max``;
  dual :func:`spectral_dual_norm` = ``sqrt(d_out/d_in) ||G||_nuclear``.
- :func:`sign_lmo`, embeddings and LM head: ℓ1→ℓ∞ operator norm ``max |W_ij|``; dual
  :func:`l1_norm` = ``Σ|G_ij|``.
- :func:`column_normalize`, one-hot inputs: ℓ1→RMS (largest column RMS); dual
  ``sqrt(d_out) Σ_j ||G_:j||₂``.
- :func:`row_normalize`, output heads: RMS→ℓ∞ (``sqrt(d_in)`` × largest row ℓ2 norm); dual
  ``Σ_i ||G_i:||₂ / sqrt(d_in)``.

Dual norms return a 0-dim float32 tensor (float64 for float64 input) on ``g``'s device and never
read it back to the host, so an optimizer step computing them does not wait on the device.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lightning_dyn._checks import check_choice, check_positive_int
from lightning_dyn.functional._ns_coefficients import NS_COEFFICIENTS as NS_COEFFICIENTS
from lightning_dyn.functional._ns_coefficients import NSCoefficients as NSCoefficients
from lightning_dyn.functional._ns_coefficients import NSPreset as NSPreset
from lightning_dyn.functional._ns_coefficients import resolve_coefficients

SpectralScale = Literal["rms_to_rms", "muon", "none"]
SPECTRAL_SCALES: tuple[str, ...] = ("rms_to_rms", "muon", "none")


def _check_matrix(g: Tensor) -> None:
    """Raise ``ValueError`` unless ``g`` is a matrix, a conv kernel or a batch (ndim >= 2)."""
    if g.ndim < 2:
        raise ValueError(
            f"g must have at least 2 dimensions, (d_out, d_in) or (d_out, c_in, *kernel); "
            f"got shape {tuple(g.shape)}."
        )


def _as_matrix(g: Tensor) -> Tensor:
    """View a ``(d_out, d_in)`` weight or ``(d_out, c_in, *kernel)`` conv kernel as a matrix."""
    _check_matrix(g)
    return g.reshape(g.shape[0], -1)


def _work_dtype(g: Tensor) -> torch.dtype:
    """float32, or float64 for float64 input: reductions are not accumulated in 8-bit mantissas."""
    return torch.promote_types(g.dtype, torch.float32)


def newton_schulz(
    g: Tensor,
    steps: int = 5,
    coefficients: NSPreset | NSCoefficients = "muon",
    eps: float = 1e-7,
    dtype: torch.dtype | None = torch.bfloat16,
) -> Tensor:
    """Approximate polar factor ``UVᵀ`` of ``g = USVᵀ`` by a Newton-Schulz iteration.

    ``g`` is divided by ``max(||g||_F, eps)`` first, so every singular value is at most 1 and the
    iteration converges; then ``steps`` steps of ``X <- aX + b(XXᵀ)X + c(XXᵀ)²X`` run on the
    ``(m, n)`` matrices with ``m <= n`` (a tall input is transposed, so ``XXᵀ`` is the small Gram
    matrix). With bfloat16, the defaults and a 2-D input, the result is bit-for-bit that of
    ``torch.optim.Muon`` (on CPU), cast back to ``g``'s dtype. KellerJordan/Muon adds ``eps`` to
    the norm instead of clamping; the two differ only for a norm within a few ``eps`` of zero.

    Unlike the other functions here, leading dimensions are a batch: ``(..., m, n)`` gives the
    polar factor of each matrix. :func:`spectral_lmo` flattens conv kernels instead.

    Args:
        g: Matrix ``(m, n)`` or batch ``(..., m, n)``.
        steps: Number of Newton-Schulz steps, at least 1.
        coefficients: A name in :data:`NS_COEFFICIENTS` or a tuple ``(a, b, c)``. With
            ``"muon"`` the result is ``US'Vᵀ`` with ``S'`` in a band around 1 (see there).
        eps: Lower bound on the Frobenius norm; a zero matrix gives zeros, not NaN.
        dtype: Dtype to iterate in; ``None`` keeps ``g``'s. bfloat16 (Muon's choice) is fast on
            GPUs and accurate enough for an update direction; use float32 or float64 to converge.

    Returns:
        A tensor of ``g``'s shape and dtype.

    Raises:
        ValueError: If ``g`` has fewer than 2 dimensions, ``steps < 1`` or ``coefficients`` is
            neither a preset name nor a 3-tuple.
    """
    _check_matrix(g)
    check_positive_int("steps", steps)
    a, b, c = resolve_coefficients(coefficients)
    x = g if dtype is None else g.to(dtype)
    tall = g.shape[-2] > g.shape[-1]
    if tall:
        x = x.mT
    x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp_min(eps)
    if x.ndim == 2:
        # A single matrix: torch.optim.Muon's own addmm sequence (same bits, and on the CPU
        # several times faster than a batch of one through baddbmm).
        for _ in range(steps):
            gram = x @ x.T  # (m, m)
            poly = gram * b if c == 0 else torch.addmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.addmm(x, poly, x, beta=a)  # aX + (bA + cA²)X
        return (x.T if tall else x).to(g.dtype)
    # A batch: baddbmm applies the scalars in its fused kernel, as addmm does for one matrix.
    x = x.reshape(-1, *x.shape[-2:])  # (B, m, n), m <= n
    for _ in range(steps):
        gram = x @ x.mT  # (B, m, m)
        # bA + cA². For c = 0 (cubic) the square is skipped: a matmul saved, and bfloat16
        # baddbmm on CPU returns wrong values for alpha=0 (seen on torch 2.13, 32x32 and up).
        poly = gram * b if c == 0 else torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a)  # aX + (bA + cA²)X
    x = x.reshape(*g.shape[:-2], *x.shape[-2:])
    if tall:
        x = x.mT
    return x.to(g.dtype)


def spectral_scale(shape: tuple[int, ...], scale: SpectralScale = "rms_to_rms") -> float:
    """Factor that :func:`spectral_lmo` applies to the polar factor of a weight of ``shape``.

    Args:
        shape: ``(d_out, d_in)`` or ``(d_out, c_in, *kernel)``; ``d_in`` is then
            ``c_in * prod(kernel)``.
        scale: ``"rms_to_rms"``: ``sqrt(d_out/d_in)``, the radius of the RMS→RMS unit ball (Scion,
            LANTON arXiv 2510.14009); ``"muon"``: ``sqrt(max(1, d_out/d_in))`` (KellerJordan/Muon
            and ``torch.optim.Muon``'s ``"original"`` adjustment); ``"none"``: 1.

    Returns:
        The factor, a Python float (it depends on the shape only).
    """
    check_choice("scale", scale, SPECTRAL_SCALES)
    d_out = shape[0]
    d_in = math.prod(shape[1:])
    if scale == "rms_to_rms":
        return math.sqrt(d_out / d_in)
    if scale == "muon":
        return math.sqrt(max(1.0, d_out / d_in))
    return 1.0


def spectral_lmo(
    g: Tensor,
    steps: int = 5,
    coefficients: NSPreset | NSCoefficients = "muon",
    eps: float = 1e-7,
    dtype: torch.dtype | None = torch.bfloat16,
    scale: SpectralScale = "rms_to_rms",
) -> Tensor:
    """LMO of the RMS→RMS operator norm: ``spectral_scale(g.shape, scale) · NS(g)``.

    The RMS→RMS norm of a ``(d_out, d_in)`` weight is ``sqrt(d_in/d_out) σ_max``: how much it can
    grow the RMS of an activation. Over its unit ball, ``<G, O>`` is largest at
    ``O = sqrt(d_out/d_in) UVᵀ``, with value :func:`spectral_dual_norm`, so
    ``scale="rms_to_rms"`` is the exact LMO up to the Newton-Schulz approximation of ``UVᵀ``
    (Scion arXiv 2502.07529, LANTON arXiv 2510.14009). ``"muon"`` never shrinks wide matrices;
    ``"none"`` is the bare polar factor (spectral norm ball). Steps go against it:
    ``X <- X - lr * spectral_lmo(B)``.

    Args:
        g: Gradient or momentum of a weight, ``(d_out, d_in)`` or conv ``(d_out, c_in, *kernel)``;
            a conv kernel is orthogonalised as the ``(d_out, c_in * prod(kernel))`` matrix.
        steps: Newton-Schulz steps, see :func:`newton_schulz`.
        coefficients: Newton-Schulz preset name or ``(a, b, c)``, see :data:`NS_COEFFICIENTS`.
        eps: Lower bound on the Frobenius norm, see :func:`newton_schulz`.
        dtype: Dtype of the iteration (``None``: ``g``'s); the result has ``g``'s dtype.
        scale: ``"rms_to_rms"``, ``"muon"`` or ``"none"``, see :func:`spectral_scale`.

    Returns:
        A tensor of ``g``'s shape and dtype.

    Raises:
        ValueError: If ``g`` has fewer than 2 dimensions or an argument is out of range.
    """
    m = _as_matrix(g)
    factor = spectral_scale(m.shape, scale)
    return (newton_schulz(m, steps, coefficients, eps, dtype) * factor).reshape(g.shape)


def sign_lmo(g: Tensor) -> Tensor:
    """LMO of the ℓ1→ℓ∞ operator norm ``max |W_ij|`` (an elementwise ℓ∞ ball): ``sign(g)``.

    ``<G, O>`` over ``|O_ij| <= 1`` is largest at the vertex ``sign(G)``, with value ``Σ|G_ij|``
    (:func:`l1_norm`): Signum's step, used by Scion (``Sign``, without its optional ``1/d_in``)
    and LANTON for embeddings and the LM head. Any shape works; zero entries stay zero.

    Args:
        g: Gradient or momentum, any shape.

    Returns:
        ``sign(g)``, of ``g``'s shape and dtype.
    """
    return torch.sign(g)


def column_normalize(g: Tensor, eps: float = 1e-8) -> Tensor:
    """LMO of the ℓ1→RMS operator norm (largest column RMS): every column to unit RMS.

    An ``nn.Embedding``-like layer fed one-hot vectors moves its output RMS by at most the RMS of
    one column, so this norm limits each column: its LMO rescales column ``j`` to
    ``sqrt(d_out) G_j / ||G_j||``, with ``<G, O> = sqrt(d_out) Σ_j ||G_j||₂``. This is Scion's
    ``ColNorm`` (``normalized=False``); for ``nn.Embedding`` (stored ``(vocab, dim)``) pass the
    transpose.

    Args:
        g: ``(d_out, d_in)`` or conv ``(d_out, c_in, *kernel)`` (flattened to columns of the
            ``(d_out, c_in * prod(kernel))`` matrix).
        eps: Added to each column's RMS; a zero column stays zero.

    Returns:
        A tensor of ``g``'s shape and dtype.

    Raises:
        ValueError: If ``g`` has fewer than 2 dimensions.
    """
    m = _as_matrix(g)
    rms = torch.linalg.vector_norm(m, dim=0, keepdim=True, dtype=_work_dtype(g))
    rms = rms / math.sqrt(m.shape[0])
    return (m / (rms + eps)).to(g.dtype).reshape(g.shape)


def row_normalize(g: Tensor, eps: float = 1e-8) -> Tensor:
    """LMO of the RMS→ℓ∞ operator norm (``sqrt(d_in)`` times the largest row ℓ2 norm).

    An output head judged by its largest logit change per unit-RMS input: row ``i`` can change
    its logit by ``sqrt(d_in) ||W_i||₂``, so the LMO rescales every row to ``ℓ2`` norm
    ``1/sqrt(d_in)``, with ``<G, O> = Σ_i ||G_i||₂ / sqrt(d_in)``. This is Scion's ``RowNorm``
    with its default ``normalized=True``; multiply by ``sqrt(d_in)`` for unit rows.

    Args:
        g: ``(d_out, d_in)`` or conv ``(d_out, c_in, *kernel)`` (each output channel is a row).
        eps: Added to ``sqrt(d_in) ||G_i||₂``; a zero row stays zero.

    Returns:
        A tensor of ``g``'s shape and dtype.

    Raises:
        ValueError: If ``g`` has fewer than 2 dimensions.
    """
    m = _as_matrix(g)
    norm = torch.linalg.vector_norm(m, dim=1, keepdim=True, dtype=_work_dtype(g))
    norm = norm * math.sqrt(m.shape[1])
    return (m / (norm + eps)).to(g.dtype).reshape(g.shape)


def nuclear_norm(g: Tensor) -> Tensor:
    """Exact nuclear norm ``Σ σ_i`` (sum of singular values) by ``torch.linalg.svdvals``.

    ``svdvals`` rejects bfloat16 and float16, so the matrix is upcast to float32 (float64 stays
    float64). On a GPU this is a dense SVD: for large layers :func:`nuclear_norm_estimate` costs
    a few matmuls instead.

    Args:
        g: ``(d_out, d_in)`` or conv ``(d_out, c_in, *kernel)``.

    Returns:
        0-dim float32 tensor (float64 for float64 input).

    Raises:
        ValueError: If ``g`` has fewer than 2 dimensions.
    """
    return torch.linalg.svdvals(_as_matrix(g).to(_work_dtype(g))).sum()


def nuclear_norm_estimate(
    g: Tensor,
    steps: int = 5,
    coefficients: NSPreset | NSCoefficients = "muon",
    eps: float = 1e-7,
    dtype: torch.dtype | None = torch.bfloat16,
) -> Tensor:
    """Cheap nuclear norm estimate ``<G, NS(G)>`` from a Newton-Schulz polar factor.

    ``<G, UVᵀ> = Σ σ_i`` exactly; Newton-Schulz gives ``US'Vᵀ``, so this is ``Σ σ_i s'_i`` with
    ``s'`` in Muon's band (see :data:`NS_COEFFICIENTS`), or below it for the smallest ``σ_i``.
    Measured with ``"muon"`` and 5 steps on Gaussian matrices 32 to 256 a side (square, 1:2, 1:4,
    2:1, 4:1; bfloat16 and float32 alike): 9-21% below the exact value (square 9-17%, rectangular
    14-21%); 16x16 ones read 0-12% low. It is not a bound: a flat spectrum of 2 equal singular
    values reads 11% high. The ratio depends on shape and spectrum, so compare estimates only
    between layers of like shape.

    Args:
        g: ``(d_out, d_in)`` or conv ``(d_out, c_in, *kernel)``.
        steps: Newton-Schulz steps (more steps: smaller gap, more cost).
        coefficients: Newton-Schulz preset name or ``(a, b, c)``, see :data:`NS_COEFFICIENTS`.
        eps: Lower bound on the Frobenius norm, see :func:`newton_schulz`.
        dtype: Dtype of the iteration (``None``: ``g``'s); the inner product is float32 (float64
            for float64 input).

    Returns:
        0-dim float32 tensor (float64 for float64 input).

    Raises:
        ValueError: If ``g`` has fewer than 2 dimensions or an argument is out of range.
    """
    m = _as_matrix(g)
    work = _work_dtype(g)
    polar = newton_schulz(m, steps, coefficients, eps, dtype)
    return (m.to(work) * polar.to(work)).sum()


def spectral_dual_norm(
    g: Tensor,
    exact: bool = True,
    steps: int = 5,
    coefficients: NSPreset | NSCoefficients = "muon",
    eps: float = 1e-7,
    dtype: torch.dtype | None = torch.bfloat16,
) -> Tensor:
    """Dual of the RMS→RMS operator norm: ``sqrt(d_out/d_in) ||G||_nuclear``.

    It is the value ``<G, spectral_lmo(G, scale="rms_to_rms")>`` would have with an exact polar
    factor, the norm LANTON (arXiv 2510.14009) measures hidden-layer gradient noise in.

    Args:
        g: ``(d_out, d_in)`` or conv ``(d_out, c_in, *kernel)``; ``d_in = c_in * prod(kernel)``.
        exact: Use :func:`nuclear_norm` (SVD); ``False`` uses :func:`nuclear_norm_estimate`
            (reads low, see there).
        steps: Newton-Schulz steps of the estimate (unused when ``exact``).
        coefficients: Its Newton-Schulz coefficients (unused when ``exact``).
        eps: Its Frobenius norm floor (unused when ``exact``).
        dtype: Its Newton-Schulz dtype (unused when ``exact``).

    Returns:
        0-dim float32 tensor (float64 for float64 input).

    Raises:
        ValueError: If ``g`` has fewer than 2 dimensions or an argument is out of range.
    """
    if exact:
        nuclear = nuclear_norm(g)
    else:
        nuclear = nuclear_norm_estimate(g, steps, coefficients, eps, dtype)
    return nuclear * spectral_scale(g.shape, "rms_to_rms")


def l1_norm(g: Tensor) -> Tensor:
    """Dual of the ℓ1→ℓ∞ operator norm ``max |W_ij|``: ``Σ |G_ij|`` = ``<G, sign(G)>``.

    Args:
        g: Any shape (a 1-D gain's sign step has the same dual).

    Returns:
        0-dim float32 tensor (float64 for float64 input), accumulated in that dtype.
    """
    return g.abs().sum(dtype=_work_dtype(g))
