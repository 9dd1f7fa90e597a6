"""Position size (notional in USDT): the contract's base rule, capped by a risk budget and a fractional Kelly
bound."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from risk.types import MarketRegime

REGIME_SIZE_MULTIPLIER: Mapping[str, float] = MappingProxyType(
    {"trending_up": 1.0, "trending_down": 1.0, "ranging": 0.8, "volatile": 0.5, "liquidation_event": 0.0}
)


def floor_to_cents(amount_usdt: float) -> float:
    """Round a USDT amount down to the cent, so a capped size never creeps above its cap."""
    return math.floor(amount_usdt * 100.0) / 100.0


def base_size_usdt(base_usdt: float, confidence: float, risk_score: float, regime: MarketRegime) -> float:
    """base × confidence × (1 − risk_score/100) × regime multiplier (the contract's size rule)."""
    # min(max(x, low), high) as conditionals: the same result, NaN included, without two calls per bound
    confidence = 0.0 if confidence < 0.0 else 1.0 if confidence > 1.0 else confidence
    risk_score = 0.0 if risk_score < 0.0 else 100.0 if risk_score > 100.0 else risk_score
    return base_usdt * confidence * (1.0 - risk_score / 100.0) * REGIME_SIZE_MULTIPLIER[regime]


def risk_budget_cap_usdt(equity_usdt: float, risk_fraction: float, stop_fraction: float) -> float:
    """The notional whose loss at the stop is `risk_fraction` of equity: equity × risk fraction / stop
    distance."""
    if equity_usdt <= 0.0:
        return 0.0
    return equity_usdt * risk_fraction / stop_fraction


def bracket_win_probability(
    drift_per_minute: float, sigma_1m: float, stop_fraction: float, take_profit_fraction: float
) -> float:
    """P(the target is reached before the stop) for a Brownian log-price with this drift and volatility.

    With ν = 2μ/σ², a = target distance and b = stop distance: P = (1 − e^{νb}) / (e^{−νa} − e^{νb}); b/(a+b)
    without drift. The drift is the model's edge over its horizon, assumed to persist until one side is hit.
    """
    gap = stop_fraction + take_profit_fraction
    if sigma_1m <= 0.0:
        return 1.0 if drift_per_minute > 0.0 else stop_fraction / gap
    nu = 2.0 * drift_per_minute / (sigma_1m * sigma_1m)
    if abs(nu * gap) < 1e-12:
        return stop_fraction / gap
    if nu > 0.0:
        return math.expm1(-nu * stop_fraction) / math.expm1(-nu * gap)
    # mirror image: the stop reached first with the roles of target and stop swapped
    return 1.0 - math.expm1(nu * take_profit_fraction) / math.expm1(nu * gap)


def kelly_fraction_at_risk(win_probability: float, reward_risk_ratio: float) -> float:
    """Kelly's fraction of equity to put at risk on a bet paying `reward_risk_ratio` : 1; never negative."""
    if reward_risk_ratio <= 0.0:
        return 0.0
    fraction = win_probability - (1.0 - win_probability) / reward_risk_ratio
    return 0.0 if fraction < 0.0 else fraction  # max(fraction, 0.0)


def kelly_cap_usdt(
    equity_usdt: float,
    kelly_fraction: float,
    win_probability: float,
    reward_risk_ratio: float,
    stop_fraction: float,
) -> float:
    """The notional that puts a fractional Kelly share of equity at risk at the stop."""
    if equity_usdt <= 0.0:
        return 0.0
    at_risk = kelly_fraction * kelly_fraction_at_risk(win_probability, reward_risk_ratio)
    return equity_usdt * at_risk / stop_fraction


@dataclass(frozen=True, slots=True)
class SizePlan:
    """A position size and the bounds it came from; `binding` names the smallest."""

    size_usdt: float
    binding: str
    bounds: Mapping[str, float]


SIZE_BOUNDS = ("base_rule", "risk_budget", "kelly")


def plan_size(
    *,
    base_usdt: float,
    confidence: float,
    risk_score: float,
    regime: MarketRegime,
    equity_usdt: float,
    risk_fraction: float,
    kelly_fraction: float,
    win_probability: float,
    reward_risk_ratio: float,
    stop_fraction: float,
) -> SizePlan:
    """The size: the base rule, never above the risk budget nor the fractional Kelly bound; rounded down to
    cents.

    Monotone: non-decreasing in confidence, non-increasing in risk score (the caps do not depend on either).
    """
    bounds = size_bounds(
        base_usdt,
        confidence,
        risk_score,
        regime,
        equity_usdt,
        risk_fraction,
        kelly_fraction,
        win_probability,
        reward_risk_ratio,
        stop_fraction,
    )
    size_usdt, binding = bound_size(bounds)
    return SizePlan(size_usdt, SIZE_BOUNDS[binding], MappingProxyType(dict(zip(SIZE_BOUNDS, bounds, strict=True))))


def size_bounds(
    base_usdt: float,
    confidence: float,
    risk_score: float,
    regime: MarketRegime,
    equity_usdt: float,
    risk_fraction: float,
    kelly_fraction: float,
    win_probability: float,
    reward_risk_ratio: float,
    stop_fraction: float,
) -> tuple[float, float, float]:
    """The bounds of `plan_size` in the order of `SIZE_BOUNDS` (the arguments are the same, positional)."""
    return (
        base_size_usdt(base_usdt, confidence, risk_score, regime),
        risk_budget_cap_usdt(equity_usdt, risk_fraction, stop_fraction),
        kelly_cap_usdt(equity_usdt, kelly_fraction, win_probability, reward_risk_ratio, stop_fraction),
    )


def bound_size(bounds: tuple[float, float, float]) -> tuple[float, int]:
    """The size the smallest bound allows, rounded down to cents, and where that bound stands (the first of
    equal ones, as min() picks it)."""
    binding = 0
    if bounds[1] < bounds[binding]:
        binding = 1
    if bounds[2] < bounds[binding]:
        binding = 2
    smallest = bounds[binding]
    return floor_to_cents(0.0 if smallest < 0.0 else smallest), binding  # max(smallest, 0.0)
