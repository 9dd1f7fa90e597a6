"""Stops, leverage, sizing, portfolio limits, VaR and the config: hand-worked cases."""

import math

import numpy as np
import pytest

from risk import (
    BTCUSDT_BRACKETS,
    OpenPosition,
    PortfolioLimits,
    PortfolioState,
    RiskConfig,
    StopSettings,
    check_candidate,
    historical_var,
    liquidation_price,
    max_safe_leverage,
    parametric_var,
    plan_stops,
    trading_state_for,
    volatility_leverage_cap,
)
from risk.sizing import bracket_win_probability, kelly_fraction_at_risk


def test_stops_at_the_reference_volatility_are_the_original_two_and_four_percent():
    # ATR 1 % of price is the reference move → 2 % stop, 4 % target in a trending market × 1.25 target scale
    plan = plan_stops("long", 100.0, 1.0, 0.0, 60, "trending_up", StopSettings())
    assert plan.stop_loss_price == pytest.approx(98.0)
    assert plan.take_profit_price == pytest.approx(105.0)
    assert plan.risk_reward_ratio == abs(plan.take_profit_price - 100.0) / abs(100.0 - plan.stop_loss_price)
    short = plan_stops("short", 100.0, 0.5, 0.0, 60, "ranging", StopSettings())
    # half the reference move → 1 % × ranging 0.8 = 0.8 % stop; target 0.8 % × 2 = 1.6 %
    assert short.stop_loss_price == pytest.approx(100.8)
    assert short.take_profit_price == pytest.approx(98.4)


def test_stops_widen_with_volatility_within_bounds():
    calm = plan_stops("long", 100.0, 0.0, 0.0001, 60, "ranging", StopSettings())
    wild = plan_stops("long", 100.0, 0.0, 0.01, 60, "volatile", StopSettings())
    assert calm.stop_fraction == pytest.approx(0.0025)  # the minimum
    assert wild.stop_fraction == pytest.approx(0.10)  # the maximum
    assert wild.stop_loss_price < calm.stop_loss_price


def test_max_safe_leverage_hand_worked():
    # long 0.01 BTC at 60,000 (bracket 1: MMR 0.4 %, cum 0), stop 58,800 (2 %), buffer 0.5 % → LP ≤ 58,500.
    # LP = 60,000·(1 − 1/L) / 0.996 ≤ 58,500 ⇔ 1/L ≥ 1 − 0.971 = 0.029 ⇔ L ≤ 34.48 → 34
    assert max_safe_leverage("long", 60000.0, 0.01, 58800.0, BTCUSDT_BRACKETS, 0.005) == 34
    assert liquidation_price("long", 60000.0, 0.01, 34, BTCUSDT_BRACKETS) <= 58500.0
    assert liquidation_price("long", 60000.0, 0.01, 35, BTCUSDT_BRACKETS) > 58500.0
    # short, stop 61,200, liq must be ≥ 61,500:
    # 60,000·(1 + 1/L)/1.004 ≥ 61,500 ⇔ 1/L ≥ 0.0291 ⇔ L ≤ 34.36 → 34
    assert max_safe_leverage("short", 60000.0, 0.01, 61200.0, BTCUSDT_BRACKETS, 0.005) == 34
    # a stop within 0.5 % of zero leaves no safe leverage even for a long
    assert max_safe_leverage("long", 100.0, 1.0, 0.4, BTCUSDT_BRACKETS, 0.005) == 0


def test_volatility_cap():
    # 3σ√T = 3 · 0.001 · √100 = 3 %; half the margin → 0.5 / 0.03 = 16.7 → 16
    assert volatility_leverage_cap(0.001, 100) == 16
    assert volatility_leverage_cap(0.0, 100) == 125


def test_kelly_and_bracket_probability():
    # p = 0.6 at 2:1 → f* = 0.6 − 0.4/2 = 0.4; a losing bet gives 0
    assert kelly_fraction_at_risk(0.6, 2.0) == pytest.approx(0.4)
    assert kelly_fraction_at_risk(0.3, 2.0) == 0.0
    # driftless: P(target 2 % before stop 1 %) = 1 / 3
    assert bracket_win_probability(0.0, 0.001, 0.01, 0.02) == pytest.approx(1 / 3)
    # drift μ, ν = 2μ/σ² = 100, a = 0.02, b = 0.01: (1 − e^{1}) / (e^{−2} − e^{1}) = 0.6652
    assert bracket_win_probability(5e-5, 0.001, 0.01, 0.02) == pytest.approx((1 - math.e) / (math.exp(-2) - math.e))
    assert bracket_win_probability(-5e-5, 0.001, 0.01, 0.02) < 1 / 3


def test_trading_state_thresholds():
    limits = PortfolioLimits(max_daily_loss=0.05, max_drawdown=0.15, reduce_at=0.8)
    assert trading_state_for(PortfolioState(10_000, 10_000, 10_000), limits) == "ACTIVE"
    # drawdown 13 % ≥ 0.8 · 15 % → REDUCING; 15 % → HALTED; daily loss 4 % → REDUCING, 5 % → HALTED
    assert trading_state_for(PortfolioState(8_700, 10_000, 8_700), limits) == "REDUCING"
    assert trading_state_for(PortfolioState(8_500, 10_000, 8_500), limits) == "HALTED"
    assert trading_state_for(PortfolioState(9_600, 9_600, 10_000), limits) == "REDUCING"
    assert trading_state_for(PortfolioState(9_500, 9_500, 10_000), limits) == "HALTED"
    assert trading_state_for(PortfolioState(0, 10_000, 10_000), limits) == "HALTED"


def _position(symbol: str, notional: float, leverage: int) -> OpenPosition:
    return OpenPosition(symbol, "long", notional / 100.0, 100.0, leverage, 98.0, 104.0, 90.0, 0)


def test_check_candidate_names_the_limit():
    limits = PortfolioLimits(max_gross_exposure=3.0, max_symbol_exposure=1.0, max_margin_use=0.5, max_open_positions=2)
    flat = PortfolioState(10_000, 10_000, 10_000)
    approval = check_candidate("BTCUSDT", 1_000.0, 10, flat, limits)
    assert approval.approved and approval.allowed_size_usdt == 1_000.0
    assert approval.portfolio_impact == pytest.approx(1_000.0 / 30_000.0)
    # per symbol: 10,000 allowed
    assert check_candidate("BTCUSDT", 25_000.0, 10, flat, limits).allowed_size_usdt == 10_000.0
    # gross: 28,000 held of 30,000 → 2,000 left
    busy = PortfolioState(10_000, 10_000, 10_000, (_position("ETHUSDT", 28_000.0, 100),))
    approval = check_candidate("BTCUSDT", 5_000.0, 10, busy, limits)
    assert approval.allowed_size_usdt == 2_000.0 and approval.binding_limit == "max_gross_exposure"
    # margin: 4,990 of 5,000 posted → 10 × 2 = 20 USDT at 2x... capped there
    margin_bound = PortfolioState(10_000, 10_000, 10_000, (_position("ETHUSDT", 4_990.0, 1),))
    approval = check_candidate("BTCUSDT", 5_000.0, 2, margin_bound, limits)
    assert approval.allowed_size_usdt == 20.0 and approval.binding_limit == "max_margin_use"
    full = PortfolioState(10_000, 10_000, 10_000, (_position("ETHUSDT", 100, 1), _position("XRPUSDT", 100, 1)))
    assert check_candidate("BTCUSDT", 100.0, 2, full, limits).refused_by == "max_open_positions"
    halted = PortfolioState(10_000, 10_000, 10_000, trading_state="HALTED")
    assert check_candidate("BTCUSDT", 100.0, 2, halted, limits).refused_by == "trading_state"
    exhausted = PortfolioState(10_000, 10_000, 10_000, (_position("ETHUSDT", 5_000.0, 1),))
    assert check_candidate("BTCUSDT", 100.0, 2, exhausted, limits).refused_by == "max_margin_use"


def test_value_at_risk():
    rng = np.random.default_rng(5)
    returns = rng.normal(0.0, 0.01, 5000).tolist()
    assert historical_var(returns, 0.99) == pytest.approx(-np.quantile(returns, 0.01))
    assert historical_var([0.01, 0.02], 0.95) == 0.0
    # z(0.99) = 2.326348; 0.001 · √100 · z = 0.02326348
    assert parametric_var(0.001, 100, 0.99) == pytest.approx(0.02326348, abs=1e-8)
    with pytest.raises(ValueError):
        historical_var([], 0.99)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_leverage", 0),
        ("max_leverage", 126),
        ("max_leverage", 2.5),
        ("base_position_usdt", -1.0),
        ("taker_fee_rate", 1.5),
        ("min_liquidation_buffer", -0.1),
        ("risk_fraction", float("nan")),
        ("kelly_fraction", 2.0),
        ("slippage_bps", -1.0),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RiskConfig(**{field: value})


def test_config_from_environment():
    config = RiskConfig.from_env({"MLRISK_BASE_POSITION_USDT": "250", "MLRISK_MAX_LEVERAGE": "20"})
    assert config.base_position_usdt == 250.0 and config.max_leverage == 20
    assert RiskConfig.from_env({}) == RiskConfig()
    with pytest.raises(ValueError, match="MLRISK_MAX_LEVERAGE"):
        RiskConfig.from_env({"MLRISK_MAX_LEVERAGE": "200"})
    with pytest.raises(ValueError, match="MLRISK_BASE_POSITION_USDT"):
        RiskConfig.from_env({"MLRISK_BASE_POSITION_USDT": "lots"})
