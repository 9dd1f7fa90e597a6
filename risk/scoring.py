"""Scores: volatility, liquidity, liquidation risk, the composite risk score and the labels derived from
it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

from risk.normal import normal_cdf
from risk.types import MarketRegime, MarketSnapshot, RiskLevel, Side, SignalStrength, SignalType

# How much each part weighs in the 0..100 risk score; the weights sum to 1, so the score stays in 0..100.
RISK_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "volatility": 0.25,
        "liquidity": 0.15,
        "liquidation": 0.20,
        "regime": 0.15,
        "disagreement": 0.15,
        "concentration": 0.10,
    }
)
_WEIGHTS = tuple(RISK_WEIGHTS.items())
REGIME_RISK: Mapping[str, float] = MappingProxyType(
    {
        "trending_up": 20.0,
        "trending_down": 25.0,
        "ranging": 30.0,
        "volatile": 70.0,
        "liquidation_event": 100.0,
    }
)
RISK_LEVEL_CEILINGS: tuple[tuple[float, RiskLevel], ...] = (
    (20.0, "minimal"),
    (40.0, "low"),
    (60.0, "medium"),
    (80.0, "high"),
)
# A spread of this many basis points halves the spread part of the liquidity score.
REFERENCE_SPREAD_BPS = 2.0
# Book depth within 0.5 % of mid equal to this many times the order halves the depth part.
REFERENCE_DEPTH_MULTIPLE = 20.0
# A 1-minute return of this many σ counts as a full volatility shock.
SHOCK_SIGMAS = 5.0


def _unit(value: float) -> float:
    # min(max(value, 0), 1) without the two calls; NaN passes through as it does there
    return 0.0 if value < 0.0 else 1.0 if value > 1.0 else value


# The scores below spell max(a, b) as `b if b > a else a` and min(a, b) as `b if b < a else a`: what the
# builtins return, ties and NaN included, without the cost of calling them on every bar.


def volatility_score(market: MarketSnapshot) -> float:
    """0..1: the volatility percentile, raised by a shock in the last bar; 0.5 when the percentile is
    unknown."""
    percentile = market.vol_percentile if math.isfinite(market.vol_percentile) else 0.5
    shock = 0.0
    if market.sigma_1m > 0.0 and math.isfinite(market.return_1m):
        shock = abs(market.return_1m) / (SHOCK_SIGMAS * market.sigma_1m)
    return _unit(shock if shock > percentile else percentile)


def liquidity_score(market: MarketSnapshot, order_notional_usdt: float) -> float:
    """0..1 (1 = deep, active market): trading activity against its own history, spread and depth when known.

    Activity is the logistic of the mean volume/trade-count z-score; each part that is unknown is left out,
    and a market with no known part scores a neutral 0.5.
    """
    parts: list[float] = []
    volume_z, trades_z = market.volume_z, market.trades_z
    if math.isfinite(volume_z):
        activity = [volume_z, trades_z] if math.isfinite(trades_z) else [volume_z]
    else:
        activity = [trades_z] if math.isfinite(trades_z) else []
    if activity:
        mean_z = sum(activity) / len(activity)
        mean_z = -50.0 if mean_z < -50.0 else 50.0 if mean_z > 50.0 else mean_z
        parts.append(1.0 / (1.0 + math.exp(-mean_z)))
    spread_bps = market.spread_bps
    if spread_bps is not None and spread_bps >= 0.0:
        parts.append(1.0 / (1.0 + spread_bps / REFERENCE_SPREAD_BPS))
    if market.depth_usdt is not None:
        depth = market.depth_usdt.get("0.5%")
        if depth is not None and depth >= 0.0:
            reference = REFERENCE_DEPTH_MULTIPLE * (1.0 if order_notional_usdt < 1.0 else order_notional_usdt)
            parts.append(depth / (depth + reference))
    if not parts:
        return 0.5
    return _unit(sum(parts) / len(parts))


def liquidation_risk(
    entry_price: float, liquidation_price: float, sigma_per_sqrt_minute: float, horizon_minutes: float
) -> float:
    """Probability (in %) that a driftless Brownian log-price touches the liquidation price within the
    horizon.

    100 × 2·Φ(−|ln(LP/EP)| / (σ·√T)) by the reflection principle; 0 when the position cannot be liquidated
    (LP 0).
    """
    if liquidation_price <= 0.0:
        return 0.0
    distance = abs(math.log(liquidation_price / entry_price))
    spread = sigma_per_sqrt_minute * math.sqrt(horizon_minutes) if horizon_minutes > 0.0 else 0.0
    if not spread > 0.0:
        return 100.0 if distance == 0.0 else 0.0
    risk = 200.0 * normal_cdf(-distance / spread)
    return risk if risk < 100.0 else 100.0


def concentration_score(symbol_exposure_share: float, gross_exposure_share: float) -> float:
    """0..1: how close the account would be to its per-symbol or gross exposure limit."""
    share = gross_exposure_share if gross_exposure_share > symbol_exposure_share else symbol_exposure_share
    return _unit(share)


def risk_components(
    *,
    volatility: float,
    liquidity: float,
    liquidation: float,
    regime: MarketRegime,
    disagreement: float,
    concentration: float,
) -> dict[str, float]:
    """Each part of the risk score on 0..100 (100 = most risky)."""
    return {
        "volatility": 100.0 * _unit(volatility),
        "liquidity": 100.0 * (1.0 - _unit(liquidity)),
        "liquidation": 0.0 if liquidation < 0.0 else 100.0 if liquidation > 100.0 else liquidation,
        "regime": REGIME_RISK[regime],
        "disagreement": 100.0 * _unit(disagreement) if math.isfinite(disagreement) else 100.0,
        "concentration": 100.0 * _unit(concentration),
    }


def risk_score(components: Mapping[str, float]) -> float:
    """The weighted sum of the parts, 0..100."""
    score = sum([weight * components[name] for name, weight in _WEIGHTS])
    return 0.0 if score < 0.0 else 100.0 if score > 100.0 else score


def risk_level(score: float) -> RiskLevel:
    """minimal < 20 ≤ low < 40 ≤ medium < 60 ≤ high < 80 ≤ critical."""
    for ceiling, level in RISK_LEVEL_CEILINGS:
        if score < ceiling:
            return level
    return "critical"


def signal_strength(
    signal_type: SignalType, confidence: float, strong_confidence: float, closing_side: Side | None = None
) -> SignalStrength:
    """strong_buy/buy for longs, sell/strong_sell for shorts; a close sells a long or buys back a short."""
    if signal_type == "long":
        return "strong_buy" if confidence >= strong_confidence else "buy"
    if signal_type == "short":
        return "strong_sell" if confidence >= strong_confidence else "sell"
    if signal_type == "close" and closing_side is not None:
        return "sell" if closing_side == "long" else "buy"
    return "hold"
