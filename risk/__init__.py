"""Risk engine: pure functions over frozen value objects, shared by the live worker and the backtest.

No I/O, no clock, no global state: the same inputs give the same decision.
"""

from risk.config import RiskConfig
from risk.decision import decide, expected_edge_fraction, invariant_violations
from risk.leverage import LeverageChoice, choose_leverage, max_safe_leverage, volatility_leverage_cap
from risk.liquidation import (
    BTCUSDT_BRACKETS,
    DEFAULT_BRACKETS,
    ETHUSDT_BRACKETS,
    Bracket,
    BracketTable,
    MarginPosition,
    brackets_for,
    cross_liquidation_price,
    liquidation_price,
    maintenance_margin_usdt,
)
from risk.portfolio import (
    CandidateApproval,
    PortfolioLimits,
    check_candidate,
    effective_trading_state,
    historical_var,
    parametric_var,
    portfolio_impact,
    trading_state_for,
)
from risk.regime import (
    IndicatorArrays,
    RegimeConfig,
    market_indicators,
    raw_regime,
    regime_history,
    update_regime,
)
from risk.scoring import liquidation_risk, liquidity_score, risk_level, risk_score, volatility_score
from risk.sizing import SizePlan, plan_size
from risk.stops import StopPlan, StopSettings, plan_stops
from risk.types import (
    REGIMES,
    MarketRegime,
    MarketSnapshot,
    ModelView,
    OpenPosition,
    PortfolioState,
    RegimeState,
    RiskDecision,
    Side,
    SignalType,
    TradingState,
)

__all__ = [
    "BTCUSDT_BRACKETS",
    "DEFAULT_BRACKETS",
    "ETHUSDT_BRACKETS",
    "REGIMES",
    "Bracket",
    "BracketTable",
    "CandidateApproval",
    "IndicatorArrays",
    "LeverageChoice",
    "MarginPosition",
    "MarketRegime",
    "MarketSnapshot",
    "ModelView",
    "OpenPosition",
    "PortfolioLimits",
    "PortfolioState",
    "RegimeConfig",
    "RegimeState",
    "RiskConfig",
    "RiskDecision",
    "Side",
    "SignalType",
    "SizePlan",
    "StopPlan",
    "StopSettings",
    "TradingState",
    "brackets_for",
    "check_candidate",
    "choose_leverage",
    "cross_liquidation_price",
    "decide",
    "effective_trading_state",
    "expected_edge_fraction",
    "historical_var",
    "invariant_violations",
    "liquidation_price",
    "liquidation_risk",
    "liquidity_score",
    "maintenance_margin_usdt",
    "market_indicators",
    "max_safe_leverage",
    "parametric_var",
    "plan_size",
    "plan_stops",
    "portfolio_impact",
    "raw_regime",
    "regime_history",
    "risk_level",
    "risk_score",
    "trading_state_for",
    "update_regime",
    "volatility_leverage_cap",
    "volatility_score",
]
