"""Value objects shared by the risk functions: what comes in (market, model, portfolio) and what goes out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Side = Literal["long", "short"]
SignalType = Literal["long", "short", "close", "hold"]
SignalStrength = Literal["strong_buy", "buy", "hold", "sell", "strong_sell"]
RiskLevel = Literal["minimal", "low", "medium", "high", "critical"]
MarketRegime = Literal["trending_up", "trending_down", "ranging", "volatile", "liquidation_event"]
TradingState = Literal["ACTIVE", "REDUCING", "HALTED"]

REGIMES: tuple[MarketRegime, ...] = (
    "trending_up",
    "trending_down",
    "ranging",
    "volatile",
    "liquidation_event",
)
TRADING_STATES: tuple[TradingState, ...] = ("ACTIVE", "REDUCING", "HALTED")


# the fields of a position: a hold leaves every one of them empty
POSITION_FIELDS = (
    "recommended_leverage",
    "position_size_usdt",
    "quantity",
    "stop_loss_price",
    "take_profit_price",
    "risk_reward_ratio",
    "liquidation_price",
)


@dataclass(frozen=True, slots=True)
class MarketSnapshot:
    """What the market looks like at the close of a bar, as the feature code measured it."""

    symbol: str
    close_time_ms: int
    price: float  # last close: the entry reference
    atr: float  # ATR(14), price units
    sigma_1m: float  # std of 1-minute log returns over the recent window (per sqrt(minute))
    vol_percentile: float  # 0..1, rank of sigma_1m within its own trailing history
    adx: float  # ADX(14), 0..100
    trend: float  # signed trend strength in -1..1 (+ up, - down)
    return_1m: float  # last bar's log return
    volume_z: float  # z-score of volume against its own history; NaN when unknown
    trades_z: float  # z-score of trade count; NaN when the source has no trade count
    mark_price: float | None = None  # USD-M mark price when the stream carries it
    spread_bps: float | None = None  # from the order book when present
    depth_usdt: Mapping[str, float] | None = None  # {"0.1%": .., "0.5%": .., "1%": ..} both sides, when present
    book_imbalance: float | None = None  # (bid depth - ask depth) / (bid + ask) within 1 %, when present

    @property
    def reference_price(self) -> float:
        """The price liquidation is measured against: the mark price when known, as on the exchange."""
        return self.price if self.mark_price is None else self.mark_price


@dataclass(frozen=True, slots=True)
class ModelView:
    """The ensemble's view of the next `horizon_minutes`."""

    p_up: float  # calibrated ensemble P(forward return over the horizon > 0)
    confidence: float  # 0..1, already lowered by disagreement
    disagreement: float  # 0..1, spread of the member models' probabilities
    horizon_minutes: int


@dataclass(frozen=True, slots=True)
class RegimeState:
    """The regime in force and the hysteresis behind it.

    `candidate` is the regime the raw classification has shown for the last `count` bars; it replaces
    `regime` once
    `count` reaches the configured persistence. `liquidation_bars_left` counts down the decay of a
    liquidation event.
    """

    regime: MarketRegime
    candidate: MarketRegime
    count: int
    liquidation_bars_left: int = 0


@dataclass(frozen=True, slots=True)
class OpenPosition:
    """A position the account holds (isolated margin)."""

    symbol: str
    side: Side
    quantity: float
    entry_price: float
    leverage: int
    stop_loss_price: float
    take_profit_price: float
    liquidation_price: float
    opened_at_ms: int

    @property
    def notional_usdt(self) -> float:
        """Notional at the entry price."""
        return self.quantity * self.entry_price

    @property
    def margin_usdt(self) -> float:
        """Isolated margin posted for the position."""
        return self.notional_usdt / self.leverage


@dataclass(frozen=True, slots=True)
class PortfolioState:
    """The account as the risk engine sees it; `trading_state` is the state recorded so far."""

    equity: float
    peak_equity: float
    day_start_equity: float
    positions: tuple[OpenPosition, ...] = ()
    trading_state: TradingState = "ACTIVE"
    symbol: str = ""


@dataclass(frozen=True, slots=True)
class RiskDecision:
    """Every risk field of an ActionableTradeSignal, the reasons behind it and the next regime state.

    Hold signals carry None for leverage, size, quantity, stop, target, risk-reward and liquidation price.
    `risk.decision` builds it with positional arguments (keywords cost about 1 µs a decision): a change to the
    order of the fields goes there too (tests/unit/risk/test_risk_decision.py pins the order).
    """

    signal_type: SignalType
    signal_strength: SignalStrength
    confidence_score: float
    risk_level: RiskLevel
    market_regime: MarketRegime
    entry_price: float
    recommended_leverage: int | None
    position_size_usdt: float | None
    quantity: float | None
    stop_loss_price: float | None
    take_profit_price: float | None
    risk_reward_ratio: float | None
    liquidation_price: float | None
    risk_score: float
    liquidation_risk: float
    portfolio_impact: float
    volatility_score: float
    liquidity_score: float
    risk_components: Mapping[str, float]
    reasons: tuple[str, ...]
    regime_state: RegimeState
    # the risk_adjusted_positions row
    base_position_size: float
    leverage_multiplier: float | None
    stop_loss_adjustment: float | None
    take_profit_adjustment: float | None
    confidence_boost: float
    risk_factors: Mapping[str, float]
    trading_state: TradingState = "ACTIVE"
    symbol: str = ""
