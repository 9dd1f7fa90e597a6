"""decide(): the rules of one decision, case by case."""

import dataclasses
import math

import pytest
from risk_strategies import flat_portfolio, snapshot

from risk import ModelView, OpenPosition, PortfolioState, RegimeState, RiskConfig, RiskDecision, decide
from risk.decision import invariant_violations

CONFIG = RiskConfig()
SURE_UP = ModelView(p_up=0.9, confidence=0.8, disagreement=0.1, horizon_minutes=60)
SURE_DOWN = ModelView(p_up=0.1, confidence=0.8, disagreement=0.1, horizon_minutes=60)
RANGING = RegimeState("ranging", "ranging", 0)


def test_a_confident_model_opens_a_long_and_a_short():
    long = decide(snapshot(), SURE_UP, None, flat_portfolio(), RANGING, CONFIG)
    short = decide(snapshot(), SURE_DOWN, None, flat_portfolio(), RANGING, CONFIG)
    assert long.signal_type == "long" and short.signal_type == "short"
    assert long.liquidation_price < long.stop_loss_price < 60_000.0 < long.take_profit_price
    assert short.take_profit_price < 60_000.0 < short.stop_loss_price < short.liquidation_price
    assert long.signal_strength == "strong_buy" and short.signal_strength == "strong_sell"
    assert set(long.risk_components) == {
        "volatility",
        "liquidity",
        "liquidation",
        "regime",
        "disagreement",
        "concentration",
    }
    assert long.liquidation_risk <= long.risk_components["liquidation"] + 1e-12


def test_edge_below_fees_is_hold():
    # σ√T·√(2/π) = 0.0015·√60·0.798 = 0.93 %; p = 0.55 → edge 0.093 % < 1.25 × (0.08 % + 0.02 %)
    decision = decide(snapshot(), ModelView(0.55, 0.8, 0.1, 60), None, flat_portfolio(), RANGING, CONFIG)
    assert decision.signal_type == "hold"
    assert "does not cover" in decision.reasons[-1]
    assert decision.recommended_leverage is None and decision.position_size_usdt is None
    # p = 0.60 → edge 0.186 % ≥ 0.125 %: the same market now opens
    assert (
        decide(snapshot(), ModelView(0.60, 0.8, 0.1, 60), None, flat_portfolio(), RANGING, CONFIG).signal_type == "long"
    )


def test_liquidation_event_opens_nothing_and_closes_what_is_open():
    cascade = snapshot(sigma_1m=0.001, return_1m=-0.01, volume_z=6.0, trades_z=6.0)
    decision = decide(cascade, SURE_UP, None, flat_portfolio(), RANGING, CONFIG)
    assert decision.market_regime == "liquidation_event" and decision.signal_type == "hold"
    position = OpenPosition("BTCUSDT", "long", 0.01, 60_000.0, 10, 59_000.0, 62_000.0, 54_300.0, 0)
    portfolio = PortfolioState(10_000, 10_000, 10_000, (position,))
    assert decide(cascade, SURE_UP, position, portfolio, RANGING, CONFIG).signal_type == "close"


def test_open_positions_close_on_contradiction_stop_or_target_only():
    position = OpenPosition("BTCUSDT", "long", 0.01, 60_000.0, 10, 59_000.0, 62_000.0, 54_300.0, 0)
    portfolio = PortfolioState(10_000, 10_000, 10_000, (position,))
    assert decide(snapshot(), SURE_UP, position, portfolio, RANGING, CONFIG).signal_type == "hold"
    assert decide(snapshot(), ModelView(0.47, 0.8, 0.1, 60), position, portfolio, RANGING, CONFIG).signal_type == "hold"
    closing = decide(snapshot(), SURE_DOWN, position, portfolio, RANGING, CONFIG)
    assert closing.signal_type == "close" and closing.signal_strength == "sell"
    assert closing.quantity == 0.01
    assert decide(snapshot(price=58_999.0), SURE_UP, position, portfolio, RANGING, CONFIG).signal_type == "close"
    assert decide(snapshot(price=62_000.0), SURE_UP, position, portfolio, RANGING, CONFIG).signal_type == "close"


def test_reducing_and_halted_accounts_only_close():
    position = OpenPosition("BTCUSDT", "short", 0.01, 60_000.0, 10, 61_000.0, 58_000.0, 65_000.0, 0)
    for state in ("REDUCING", "HALTED"):
        flat = flat_portfolio(state=state)
        assert decide(snapshot(), SURE_UP, None, flat, RANGING, CONFIG).signal_type == "hold"
        holding = PortfolioState(10_000, 10_000, 10_000, (position,), state)
        assert decide(snapshot(), SURE_UP, position, holding, RANGING, CONFIG).signal_type == "close"
    # a drawdown past the limit halts even when the recorded state says ACTIVE
    drawn_down = PortfolioState(8_000, 10_000, 8_000)
    decision = decide(snapshot(), SURE_UP, None, drawn_down, RANGING, CONFIG)
    assert decision.signal_type == "hold" and decision.trading_state == "HALTED"


def test_leverage_respects_the_configured_maximum_and_the_regime():
    capped = decide(snapshot(), SURE_UP, None, flat_portfolio(), RANGING, RiskConfig(max_leverage=3))
    assert capped.recommended_leverage == 3
    calm = decide(snapshot(), SURE_UP, None, flat_portfolio(), RANGING, CONFIG)
    # no regime history: the raw regime applies at once
    volatile = decide(snapshot(vol_percentile=0.97), SURE_UP, None, flat_portfolio(), None, CONFIG)
    assert volatile.market_regime == "volatile"
    assert volatile.recommended_leverage < calm.recommended_leverage
    assert volatile.position_size_usdt < calm.position_size_usdt


def test_size_follows_the_contract_rule():
    decision = decide(snapshot(), SURE_UP, None, flat_portfolio(equity=1e6), RANGING, CONFIG)
    rule = 1000.0 * decision.confidence_score * (1 - decision.risk_score / 100) * 0.8
    # a large account: neither the risk budget nor Kelly binds, so the size is the rule rounded down to cents
    assert decision.position_size_usdt == math.floor(rule * 100) / 100
    assert decision.quantity == decision.position_size_usdt / decision.entry_price


def test_liquidation_is_measured_against_the_mark_price():
    near = decide(snapshot(mark_price=60_000.0), SURE_UP, None, flat_portfolio(), RANGING, CONFIG)
    assert near.signal_type == "long"
    # a mark price already below the stop: the stop would fire at once
    far = decide(snapshot(mark_price=near.stop_loss_price - 1.0), SURE_UP, None, flat_portfolio(), RANGING, CONFIG)
    assert far.signal_type == "hold" and "mark price" in far.reasons[-1]


def test_bad_market_data_is_hold_not_an_exception():
    for bad in (snapshot(sigma_1m=float("nan")), snapshot(sigma_1m=0.0)):
        assert decide(bad, SURE_UP, None, flat_portfolio(), RANGING, CONFIG).signal_type == "hold"
    with pytest.raises(ValueError):
        position = OpenPosition("ETHUSDT", "long", 1.0, 3_000.0, 5, 2_900.0, 3_200.0, 2_500.0, 0)
        decide(snapshot(), SURE_UP, position, flat_portfolio(), RANGING, CONFIG)


def test_decide_is_deterministic():
    first = decide(snapshot(), SURE_UP, None, flat_portfolio(), None, CONFIG)
    second = decide(snapshot(), SURE_UP, None, flat_portfolio(), None, CONFIG)
    assert first == second


def test_the_decision_fields_keep_the_order_decide_builds_them_in():
    # risk.decision passes RiskDecision's fields positionally: reordering them must be done there as well
    assert [field.name for field in dataclasses.fields(RiskDecision)] == [
        "signal_type",
        "signal_strength",
        "confidence_score",
        "risk_level",
        "market_regime",
        "entry_price",
        "recommended_leverage",
        "position_size_usdt",
        "quantity",
        "stop_loss_price",
        "take_profit_price",
        "risk_reward_ratio",
        "liquidation_price",
        "risk_score",
        "liquidation_risk",
        "portfolio_impact",
        "volatility_score",
        "liquidity_score",
        "risk_components",
        "reasons",
        "regime_state",
        "base_position_size",
        "leverage_multiplier",
        "stop_loss_adjustment",
        "take_profit_adjustment",
        "confidence_boost",
        "risk_factors",
        "trading_state",
        "symbol",
    ]


def test_a_position_whose_numbers_do_not_compute_holds_instead_of_raising():
    # a position restored from a forged state: its notional overflows when the stop is hit and it would close
    absurd = OpenPosition("BTCUSDT", "long", 1e308, 60_000.0, 10, 1e9, 1e10, 54_000.0, 0)
    portfolio = PortfolioState(equity=10_000.0, peak_equity=10_000.0, day_start_equity=10_000.0, positions=(absurd,))
    decision = decide(snapshot(), SURE_UP, absurd, portfolio, RANGING, CONFIG)
    assert decision.signal_type == "hold"
    assert len(decision.reasons) == 1
    assert decision.reasons[-1].startswith("the inputs do not compute: OverflowError")
    assert not invariant_violations(decision, CONFIG)
