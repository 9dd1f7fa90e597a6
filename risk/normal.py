"""The standard normal distribution, from `math.erf` alone (risk carries no scipy)."""

from __future__ import annotations

import math

_SQRT2 = math.sqrt(2.0)


def normal_cdf(x: float) -> float:
    """Φ(x), the standard normal cumulative distribution."""
    return 0.5 * math.erfc(-x / _SQRT2)


def normal_quantile(probability: float) -> float:
    """Φ⁻¹(p) by bisection to double precision; for VaR and reports, not for the per-bar path."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must lie strictly between 0 and 1, got {probability!r}")
    low, high = -40.0, 40.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if normal_cdf(middle) < probability:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)
