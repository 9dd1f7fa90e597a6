"""Stop-loss and take-profit prices scaled by volatility and regime.

The original design used a 2 % stop and a 4 % target. Here they are the stop and target at a reference
volatility (a typical adverse move of 1 % over the holding horizon), scaled linearly with the measured move
and by the regime, so that a quiet market gets a tight stop and a wild one a wide stop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from risk.types import MarketRegime, Side

# Wider stops where noise is larger; trends get room to run on the target side.
REGIME_STOP_SCALE: Mapping[str, float] = MappingProxyType(
    {"trending_up": 1.0, "trending_down": 1.0, "ranging": 0.8, "volatile": 1.5, "liquidation_event": 2.0}
)
REGIME_TAKE_PROFIT_SCALE: Mapping[str, float] = MappingProxyType(
    {"trending_up": 1.25, "trending_down": 1.25, "ranging": 0.8, "volatile": 1.5, "liquidation_event": 2.0}
)


@dataclass(frozen=True, slots=True)
class StopSettings:
    """How stops and targets follow volatility."""

    base_stop_fraction: float = 0.02
    base_take_profit_fraction: float = 0.04
    reference_move_fraction: float = 0.01  # the move over the horizon at which the base fractions apply
    min_stop_fraction: float = 0.0025
    max_stop_fraction: float = 0.10

    def __post_init__(self) -> None:
        for name in (
            "base_stop_fraction",
            "base_take_profit_fraction",
            "reference_move_fraction",
            "min_stop_fraction",
            "max_stop_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
        if self.min_stop_fraction > self.max_stop_fraction:
            raise ValueError("min_stop_fraction must not exceed max_stop_fraction")


@dataclass(frozen=True, slots=True)
class StopPlan:
    """Stop and target prices of one entry, with the scaling behind them."""

    stop_loss_price: float
    take_profit_price: float
    stop_fraction: float
    take_profit_fraction: float
    risk_reward_ratio: float
    volatility_scale: float


def expected_move_fraction(price: float, atr: float, sigma_1m: float, horizon_minutes: int) -> float:
    """A typical adverse move over the horizon as a fraction of price: the larger of ATR and σ·√T."""
    atr_fraction = atr / price if atr > 0.0 else 0.0
    sigma_move = sigma_1m * math.sqrt(horizon_minutes) if sigma_1m > 0.0 else 0.0
    return sigma_move if sigma_move > atr_fraction else atr_fraction  # max(atr_fraction, sigma_move)


def stop_fractions(move_fraction: float, regime: MarketRegime, settings: StopSettings) -> tuple[float, float, float]:
    """(stop fraction, take-profit fraction, volatility scale) for a measured move and a regime."""
    lowest = settings.min_stop_fraction / settings.base_stop_fraction
    highest = settings.max_stop_fraction / settings.base_stop_fraction
    # min(max(x, low), high) spelt out, step by step as the builtins take it, without calling them
    volatility_scale = move_fraction / settings.reference_move_fraction
    volatility_scale = lowest if lowest > volatility_scale else volatility_scale
    volatility_scale = highest if highest < volatility_scale else volatility_scale
    stop_fraction = settings.base_stop_fraction * volatility_scale * REGIME_STOP_SCALE[regime]
    stop_fraction = settings.min_stop_fraction if settings.min_stop_fraction > stop_fraction else stop_fraction
    stop_fraction = settings.max_stop_fraction if settings.max_stop_fraction < stop_fraction else stop_fraction
    ratio = settings.base_take_profit_fraction / settings.base_stop_fraction
    take_profit_fraction = stop_fraction * ratio * REGIME_TAKE_PROFIT_SCALE[regime] / REGIME_STOP_SCALE[regime]
    return stop_fraction, take_profit_fraction, volatility_scale


def price_tick(price: float) -> float:
    """The rounding step for stop and target prices: eight significant digits, never finer than 1e-6."""
    tick = 10.0 ** (math.floor(math.log10(price)) - 7)
    return 1e-6 if tick < 1e-6 else tick  # max(tick, 1e-6)


def risk_reward_ratio(entry_price: float, stop_loss_price: float, take_profit_price: float) -> float:
    """|take profit − entry| / |entry − stop loss|."""
    return abs(take_profit_price - entry_price) / abs(entry_price - stop_loss_price)


def plan_stops(
    side: Side,
    entry_price: float,
    atr: float,
    sigma_1m: float,
    horizon_minutes: int,
    regime: MarketRegime,
    settings: StopSettings,
) -> StopPlan:
    """Stop and target prices for an entry.

    Prices are rounded to the tick toward the entry (a slightly tighter stop and a slightly nearer target),
    so the rounding never moves a stop closer to the liquidation price; the risk-reward ratio is computed
    from the rounded prices, so it holds exactly.
    """
    return StopPlan(*stop_levels(side, entry_price, atr, sigma_1m, horizon_minutes, regime, settings))


def stop_levels(
    side: Side,
    entry_price: float,
    atr: float,
    sigma_1m: float,
    horizon_minutes: int,
    regime: MarketRegime,
    settings: StopSettings,
) -> tuple[float, float, float, float, float, float]:
    """The fields of `plan_stops`' StopPlan, in their order, without building the plan."""
    move = expected_move_fraction(entry_price, atr, sigma_1m, horizon_minutes)
    stop_fraction, take_profit_fraction, volatility_scale = stop_fractions(move, regime, settings)
    tick = price_tick(entry_price)
    if side == "long":
        stop_loss_price = math.ceil(entry_price * (1.0 - stop_fraction) / tick) * tick
        take_profit_price = math.floor(entry_price * (1.0 + take_profit_fraction) / tick) * tick
    else:
        stop_loss_price = math.floor(entry_price * (1.0 + stop_fraction) / tick) * tick
        take_profit_price = math.ceil(entry_price * (1.0 - take_profit_fraction) / tick) * tick
    reward_risk = (
        risk_reward_ratio(entry_price, stop_loss_price, take_profit_price) if stop_loss_price != entry_price else 0.0
    )
    return stop_loss_price, take_profit_price, stop_fraction, take_profit_fraction, reward_risk, volatility_scale
