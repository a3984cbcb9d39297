"""The coefficients ``(a, b, c)`` of the Newton-Schulz step: the presets and the check of a
user's tuple, shared by ``functional.lmo`` and ``optim.lanton`` (which checks them when the
optimizer is built)."""

from __future__ import annotations

from typing import Literal

from lightning_dyn._checks import check_choice

NSCoefficients = tuple[float, float, float]
NSPreset = Literal["cubic", "muon"]

NS_COEFFICIENTS: dict[str, NSCoefficients] = {
    "cubic": (1.5, -0.5, 0.0),
    "muon": (3.4445, -4.7750, 2.0315),
}
"""Presets ``(a, b, c)`` for the Newton-Schulz step ``X <- aX + b(XXᵀ)X + c(XXᵀ)²X``.

Each step maps every singular value ``s`` of ``X`` through ``p(s) = as + bs³ + cs⁵`` and keeps the
singular vectors, so the iteration drives the spectrum towards a fixed point of ``p`` while ``X``
tends to a multiple of the polar factor ``UVᵀ``.

- ``"cubic"``: the classic iteration, ``p(1) = 1`` with ``p'(1) = 0``; it converges to ``UVᵀ``
  for every ``s`` in ``(0, sqrt(3))``, quadratically near 1 but slowly from small ``s`` (growth
  ×1.5 a step). After Frobenius normalisation ``s`` can be ``~1/sqrt(min(m, n))``, so it needs
  tens of steps.
- ``"muon"``: KellerJordan's quintic, also ``torch.optim.Muon``'s default. It maximises the slope
  ``p'(0) = a = 3.4445`` so that small singular values grow fast enough for 5 steps in bfloat16.
  The price is overshoot: ``p(1) = 0.70``, so 1 is not a fixed point; instead ``p`` maps
  ``[0.682, 1.134]`` into itself and the spectrum oscillates inside that band, ``NS(G) = US'Vᵀ``
  rather than ``UVᵀ``. After 5 steps every singular value above ``0.0015 ||G||_F`` lies in
  ``[0.68, 1.21]`` (1.21: transients not yet in the band); smaller ones lag below. Muon's author
  found this does not hurt training; it does make ``functional.lmo.nuclear_norm_estimate`` read
  low.
"""


def resolve_coefficients(coefficients: NSPreset | NSCoefficients) -> NSCoefficients:
    """Look up a preset of :data:`NS_COEFFICIENTS`, or check a user's ``(a, b, c)``."""
    if isinstance(coefficients, str):
        check_choice("coefficients", coefficients, NS_COEFFICIENTS)
        return NS_COEFFICIENTS[coefficients]
    if len(coefficients) != 3:
        raise ValueError(
            f"coefficients must be a preset name ({', '.join(map(repr, NS_COEFFICIENTS))}) or a "
            f"tuple (a, b, c) of 3 floats; got {coefficients!r}."
        )
    a, b, c = coefficients
    return float(a), float(b), float(c)
