"""liquidation_risk against a seeded Monte Carlo of a driftless Brownian log-price."""

import math

import numpy as np
import pytest

from risk import liquidation_risk


def hit_probability_monte_carlo(
    distance: float, sigma: float, horizon: float, paths: int, steps: int, seed: int
) -> tuple[float, float]:
    """P(min log-price ≤ −distance within the horizon), with its standard error.

    Monitoring only at the steps would miss crossings between them; each step instead adds the exact
    Brownian-bridge probability of a crossing between its two end points, exp(−2·a·b / (σ²·Δt)) for end
    points a, b above the barrier, so the estimate is of the continuously monitored barrier.
    """
    rng = np.random.default_rng(seed)
    dt = horizon / steps
    estimates = []
    for _ in range(paths // 5000):
        increments = rng.normal(0.0, sigma * math.sqrt(dt), size=(5000, steps))
        path = np.concatenate((np.zeros((5000, 1)), np.cumsum(increments, axis=1)), axis=1)
        above = path + distance
        hit = (above <= 0.0).any(axis=1)
        a, b = np.maximum(above[:, :-1], 0.0), np.maximum(above[:, 1:], 0.0)
        survive = np.prod(1.0 - np.exp(-2.0 * a * b / (sigma * sigma * dt)), axis=1)
        estimates.append(np.where(hit, 1.0, 1.0 - survive))
    values = np.concatenate(estimates)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))


@pytest.mark.parametrize(("distance", "sigma", "horizon"), [(0.01, 0.001, 60.0), (0.03, 0.002, 240.0)])
def test_liquidation_risk_matches_monte_carlo(distance, sigma, horizon):
    estimate, standard_error = hit_probability_monte_carlo(distance, sigma, horizon, paths=20_000, steps=400, seed=11)
    entry = 50_000.0
    analytic = liquidation_risk(entry, entry * math.exp(-distance), sigma, horizon) / 100.0
    assert abs(estimate - analytic) < 4.0 * standard_error + 1e-3
    # a short's liquidation above the entry at the same log distance has the same risk
    assert liquidation_risk(entry, entry * math.exp(distance), sigma, horizon) == pytest.approx(analytic * 100.0)


def test_liquidation_risk_known_values():
    # distance 1.96·σ√T → 2·Φ(−1.96) = 5.00 %; σ√T = 0.001·√100 = 0.01
    assert liquidation_risk(100.0, 100.0 * math.exp(-0.0196), 0.001, 100.0) == pytest.approx(4.9996, abs=1e-3)
    assert liquidation_risk(100.0, 0.0, 0.001, 100.0) == 0.0
