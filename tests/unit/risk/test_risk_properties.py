"""Property tests: every decision keeps the signals contract's invariants, whatever the inputs."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from risk_strategies import (
    configs,
    flat_portfolio,
    markets,
    models,
    portfolios,
    positions,
    regime_states,
    snapshot,
)

from risk import ModelView, PortfolioState, RiskConfig, decide, liquidation_price, liquidation_risk
from risk.decision import invariant_violations
from risk.liquidation import brackets_for
from risk.sizing import REGIME_SIZE_MULTIPLIER, plan_size
from risk.types import REGIMES

HOLD_EMPTY = (
    "recommended_leverage",
    "position_size_usdt",
    "quantity",
    "stop_loss_price",
    "take_profit_price",
    "risk_reward_ratio",
    "liquidation_price",
)


def assert_contract(decision, config: RiskConfig, symbol: str) -> None:
    """The contract's invariants, written out independently of risk.decision.invariant_violations."""
    assert 0.0 <= decision.risk_score <= 100.0
    assert 0.0 <= decision.liquidation_risk <= 100.0
    assert 0.0 <= decision.confidence_score <= 1.0
    assert 0.0 <= decision.volatility_score <= 1.0
    assert 0.0 <= decision.liquidity_score <= 1.0
    assert 0.0 <= decision.portfolio_impact <= 1.0
    if decision.signal_type == "hold":
        assert all(getattr(decision, name) is None for name in HOLD_EMPTY)
        return
    if decision.signal_type == "close":
        return
    entry, stop = decision.entry_price, decision.stop_loss_price
    target, liq = decision.take_profit_price, decision.liquidation_price
    if decision.signal_type == "long":
        assert liq < stop < entry < target
    else:
        assert target < entry < stop < liq
    assert abs(stop - liq) >= config.min_liquidation_buffer * entry
    leverage = decision.recommended_leverage
    assert isinstance(leverage, int) and 1 <= leverage <= 125
    assert leverage <= config.max_leverage
    brackets = brackets_for(symbol)
    assert leverage <= brackets.max_leverage_for_notional(decision.quantity * entry)
    assert liquidation_price(decision.signal_type, entry, decision.quantity, leverage, brackets) == liq
    assert decision.risk_reward_ratio == abs(target - entry) / abs(entry - stop)
    rule = (
        config.base_position_usdt
        * decision.confidence_score
        * (1 - decision.risk_score / 100)
        * REGIME_SIZE_MULTIPLIER[decision.market_regime]
    )
    assert 0 < decision.position_size_usdt <= rule
    assert decision.position_size_usdt == round(decision.position_size_usdt, 2)
    assert decision.market_regime != "liquidation_event"


@settings(max_examples=300, deadline=None)
@given(data=st.data(), config=configs, model=models(), regime_prev=regime_states)
def test_every_decision_keeps_the_invariants(data, config, model, regime_prev):
    market = data.draw(markets())
    portfolio = data.draw(portfolios(exclude_symbol=market.symbol))
    position = data.draw(st.one_of(st.none(), positions(market.symbol)))
    if position is not None:
        portfolio = PortfolioState(
            portfolio.equity,
            portfolio.peak_equity,
            portfolio.day_start_equity,
            (*portfolio.positions, position),
            portfolio.trading_state,
        )
    decision = decide(market, model, position, portfolio, regime_prev, config)
    assert_contract(decision, config, market.symbol)
    assert invariant_violations(decision, config) == []
    if position is not None:
        assert decision.signal_type in ("close", "hold")
    if decision.trading_state == "HALTED" or decision.trading_state == "REDUCING":
        assert decision.signal_type in ("close", "hold")


def test_invariants_hold_on_many_opening_decisions():
    # a seeded sweep that reaches the opening path often
    # (the property test above mostly proves holds are clean)
    rng = np.random.default_rng(7)
    config = RiskConfig()
    openings = 0
    for _ in range(3000):
        price = float(10.0 ** rng.uniform(-2, 6))
        market = snapshot(
            price=price,
            symbol=str(rng.choice(["BTCUSDT", "ETHUSDT", "SOLUSDT"])),
            atr=price * float(rng.uniform(0, 0.03)),
            sigma_1m=float(10 ** rng.uniform(-3.5, -1.7)),
            vol_percentile=float(rng.uniform()),
            adx=float(rng.uniform(0, 100)),
            trend=float(rng.uniform(-1, 1)),
            mark_price=price * (1 + float(rng.uniform(-0.002, 0.002))),
        )
        model = ModelView(
            p_up=float(rng.choice([rng.uniform(0, 0.2), rng.uniform(0.8, 1.0)])),
            confidence=float(rng.uniform(0.05, 1)),
            disagreement=float(rng.uniform(0, 0.5)),
            horizon_minutes=int(rng.integers(5, 240)),
        )
        decision = decide(market, model, None, flat_portfolio(float(10 ** rng.uniform(2, 6))), None, config)
        assert_contract(decision, config, market.symbol)
        openings += decision.signal_type in ("long", "short")
    assert openings > 1000


@settings(max_examples=300, deadline=None)
@given(market=markets(), model=models(), state=st.sampled_from(["HALTED", "REDUCING"]))
def test_halted_and_reducing_accounts_open_nothing(market, model, state):
    decision = decide(market, model, None, flat_portfolio(state=state), None, RiskConfig())
    assert decision.signal_type == "hold"


@settings(max_examples=300, deadline=None)
@given(
    confidences=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    risks=st.tuples(st.floats(0, 100), st.floats(0, 100)),
    regime=st.sampled_from(REGIMES),
    equity=st.floats(100, 1e6),
    win=st.floats(0, 1),
    reward_risk=st.floats(0.5, 5),
    stop_fraction=st.floats(0.001, 0.1),
)
def test_size_grows_with_confidence_and_shrinks_with_risk(
    confidences, risks, regime, equity, win, reward_risk, stop_fraction
):
    def size(confidence, risk):
        return plan_size(
            base_usdt=1000.0,
            confidence=confidence,
            risk_score=risk,
            regime=regime,
            equity_usdt=equity,
            risk_fraction=0.01,
            kelly_fraction=0.25,
            win_probability=win,
            reward_risk_ratio=reward_risk,
            stop_fraction=stop_fraction,
        ).size_usdt

    low_c, high_c = sorted(confidences)
    low_r, high_r = sorted(risks)
    assert size(low_c, low_r) <= size(high_c, low_r)
    assert size(high_c, high_r) <= size(high_c, low_r)
    assert size(high_c, low_r) <= 1000.0 * high_c * (1 - low_r / 100)


@settings(max_examples=200, deadline=None)
@given(market=markets(symbol="BTCUSDT"), confidences=st.tuples(st.floats(0, 1), st.floats(0, 1)))
def test_decided_size_grows_with_confidence(market, confidences):
    low, high = sorted(confidences)
    portfolio = flat_portfolio()

    def size(confidence):
        model = ModelView(p_up=0.95, confidence=confidence, disagreement=0.1, horizon_minutes=60)
        decision = decide(market, model, None, portfolio, None, RiskConfig())
        return decision.position_size_usdt or 0.0

    assert size(low) <= size(high)


@settings(max_examples=300, deadline=None)
@given(
    entry=st.floats(0.01, 1e6),
    distance=st.floats(-0.5, 0.5),
    sigma=st.floats(0, 0.05),
    horizon=st.floats(0, 10_000),
)
def test_liquidation_risk_is_a_percentage(entry, distance, sigma, horizon):
    value = liquidation_risk(entry, entry * math.exp(distance), sigma, horizon)
    assert 0.0 <= value <= 100.0
    assert liquidation_risk(entry, 0.0, sigma, horizon) == 0.0
