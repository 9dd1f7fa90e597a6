"""One risk decision per bar: long, short, close or hold, with every risk field of the signal.

Edge rule: the expected gross edge of a trade over the model's horizon is (2p − 1) · E|move|, where p is the
probability of the chosen direction and E|move| = σ·√T·√(2/π) is the mean absolute Gaussian move over the
horizon. A trade opens only if that edge covers the round-trip cost (2 × taker fee + 2 × slippage) times
`min_edge_to_cost`. With the probabilities a 1-minute model produces (bunched near 0.5) almost every bar is
therefore `hold`.

Order of the steps, each of which may turn the decision into `hold` with its reason: regime → trading state
→ direction and edge → stops → leverage (at the largest size the rule could give) → risk score → size (base
rule, risk budget, Kelly) → portfolio limits → liquidation price at the final size → a last check of every
invariant. Sizes are rounded down to cents and quantity is size / entry, unrounded; stop and target are
rounded toward the entry; the liquidation price and the risk-reward ratio are computed from those final
values, so every invariant is checked on exactly what is published.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

from risk.config import RiskConfig
from risk.leverage import (
    EXCHANGE_MAX_LEVERAGE,
    LEVERAGE_CAPS,
    binding_cap_index,
    leverage_caps,
    leverage_reason,
    no_leverage_reason,
    stop_precedes_liquidation,
)
from risk.liquidation import BracketTable, liquidation_price
from risk.portfolio import (
    effective_trading_state,
    gross_exposure_usdt,
    limit_candidate,
    portfolio_impact,
    symbol_exposure_usdt,
)
from risk.regime import update_regime
from risk.scoring import (
    concentration_score,
    liquidation_risk,
    liquidity_score,
    risk_components,
    risk_level,
    risk_score,
    signal_strength,
    volatility_score,
)
from risk.sizing import (
    REGIME_SIZE_MULTIPLIER,
    SIZE_BOUNDS,
    bound_size,
    bracket_win_probability,
    floor_to_cents,
    size_bounds,
)
from risk.stops import risk_reward_ratio, stop_levels
from risk.types import (
    POSITION_FIELDS,
    MarketRegime,
    MarketSnapshot,
    ModelView,
    OpenPosition,
    PortfolioState,
    RegimeState,
    RiskDecision,
    Side,
    TradingState,
)

__all__ = ["RiskConfig", "decide", "expected_edge_fraction", "invariant_violations"]

_MEAN_ABS_GAUSSIAN = math.sqrt(2.0 / math.pi)
_EMPTY: Mapping[str, float] = MappingProxyType({})


def expected_edge_fraction(p_direction: float, sigma_1m: float, horizon_minutes: int) -> float:
    """Expected gross return of a trade in the favoured direction: (2p − 1) · σ·√T·√(2/π)."""
    return (2.0 * p_direction - 1.0) * sigma_1m * math.sqrt(horizon_minutes) * _MEAN_ABS_GAUSSIAN


def _input_problem(market: MarketSnapshot, model: ModelView) -> str | None:
    # each price and σ must be a finite positive number (a comparison with NaN is false)
    price, mark_price, sigma_1m = market.price, market.mark_price, market.sigma_1m
    if price is None or not 0.0 < price < math.inf:
        return f"price {price!r} is not a positive number"
    if mark_price is not None and not 0.0 < mark_price < math.inf:
        return f"mark price {mark_price!r} is not a positive number"
    if sigma_1m is None or not 0.0 < sigma_1m < math.inf:
        return f"sigma_1m {sigma_1m!r} is not a positive number"
    if not (0.0 <= model.p_up <= 1.0) or not (0.0 <= model.confidence <= 1.0):
        return f"model output out of range (p_up {model.p_up!r}, confidence {model.confidence!r})"
    if (
        isinstance(model.horizon_minutes, bool)
        or not isinstance(model.horizon_minutes, int)
        or model.horizon_minutes < 1
    ):
        return f"horizon_minutes {model.horizon_minutes!r} is not a positive integer"
    return None


class _Context:
    """What every branch of one decision shares (computed once)."""

    __slots__ = (
        "market",
        "model",
        "portfolio",
        "config",
        "regime_state",
        "regime",
        "state",
        "confidence",
        "volatility",
        "liquidity",
        "reasons",
        "exposures_usdt",
        "reference",
    )

    def __init__(
        self,
        market: MarketSnapshot,
        model: ModelView,
        portfolio: PortfolioState,
        config: RiskConfig,
        regime_state: RegimeState,
    ) -> None:
        self.market = market
        self.reference = market.reference_price  # what liquidation is measured against
        self.model = model
        self.portfolio = portfolio
        self.config = config
        self.regime_state = regime_state
        self.regime: MarketRegime = regime_state.regime
        self.state: TradingState = effective_trading_state(portfolio, config.limits)
        confidence = model.confidence
        if not math.isfinite(confidence):
            confidence = 0.0
        # min(max(confidence, 0.0), 1.0), without the calls
        self.confidence = 0.0 if confidence < 0.0 else 1.0 if confidence > 1.0 else confidence
        self.volatility = volatility_score(market)
        self.liquidity = liquidity_score(market, config.base_position_usdt)
        self.reasons: list[str] = []
        # (gross, symbol) exposure once `concentration` has summed them, for the portfolio check to reuse
        self.exposures_usdt: tuple[float, float] | None = None

    def components(self, liquidation: float, concentration: float) -> dict[str, float]:
        return risk_components(
            volatility=self.volatility,
            liquidity=self.liquidity,
            liquidation=liquidation,
            regime=self.regime,
            disagreement=self.model.disagreement,
            concentration=concentration,
        )

    def concentration(self, notional_usdt: float) -> float:
        """How close a position of this notional in the market's symbol brings the account to its exposure
        limits."""
        equity = self.portfolio.equity
        limits = self.config.limits
        if equity <= 0.0:
            return 1.0
        positions = self.portfolio.positions
        symbol_usdt = symbol_exposure_usdt(positions, self.market.symbol)
        symbol_share = (symbol_usdt + notional_usdt) / (equity * limits.max_symbol_exposure)
        gross_usdt = gross_exposure_usdt(positions)
        gross_share = (gross_usdt + notional_usdt) / (equity * limits.max_gross_exposure)
        self.exposures_usdt = gross_usdt, symbol_usdt
        return concentration_score(symbol_share, gross_share)

    def hold(
        self,
        reason: str,
        components: Mapping[str, float] | None = None,
        risk_factors: Mapping[str, float] = _EMPTY,
        liquidation_risk: float = 0.0,
    ) -> RiskDecision:
        self.reasons.append(reason)
        parts = components if components is not None else self.components(0.0, self.concentration(0.0))
        score = risk_score(parts)
        # positional, in the order of RiskDecision's fields: matching 29 keywords would cost about 1 µs a call
        return RiskDecision(
            "hold",  # signal_type
            "hold",  # signal_strength
            self.confidence,  # confidence_score
            risk_level(score),  # risk_level
            self.regime,  # market_regime
            self.market.price,  # entry_price
            None,  # recommended_leverage
            None,  # position_size_usdt
            None,  # quantity
            None,  # stop_loss_price
            None,  # take_profit_price
            None,  # risk_reward_ratio
            None,  # liquidation_price
            score,  # risk_score
            liquidation_risk,  # liquidation_risk
            0.0,  # portfolio_impact
            self.volatility,  # volatility_score
            self.liquidity,  # liquidity_score
            MappingProxyType(dict(parts)),  # risk_components
            tuple(self.reasons),  # reasons
            self.regime_state,  # regime_state
            self.config.base_position_usdt,  # base_position_size
            None,  # leverage_multiplier
            None,  # stop_loss_adjustment
            None,  # take_profit_adjustment
            0.0,  # confidence_boost
            risk_factors,  # risk_factors
            self.state,  # trading_state
            self.market.symbol,  # symbol
        )


def decide(
    market: MarketSnapshot,
    model: ModelView,
    position: OpenPosition | None,
    portfolio: PortfolioState,
    regime_prev: RegimeState | None,
    config: RiskConfig,
) -> RiskDecision:
    """The risk decision for one closed bar of one symbol.

    `position` is the account's open position in `market.symbol` (None when flat); `portfolio` holds every
    position, this one included. Deterministic and free of side effects: the next regime state is returned in
    the decision, not stored.
    """
    regime_state = update_regime(regime_prev, market, config.regime)
    context = _Context(market, model, portfolio, config, regime_state)
    problem = _input_problem(market, model)
    if problem is not None:
        return context.hold(problem)
    if position is not None and position.symbol != market.symbol:
        raise ValueError(f"position in {position.symbol} passed with a market snapshot of {market.symbol}")
    try:
        return _consider_entry(context) if position is None else _manage_position(context, position)
    except (ArithmeticError, ValueError) as error:
        # numbers that do not compute (say a restored position of 1e308 coins: its notional overflows) hold the
        # bar and say why; a decision never raises on its inputs' values. The failed path's own reason (an entry
        # it was describing) is dropped: the hold's reason is the failure alone.
        context.reasons.clear()
        return context.hold(f"the inputs do not compute: {error!r}")


def _close_reason(context: _Context, position: OpenPosition) -> str | None:
    price = context.market.price
    p_up = context.model.p_up
    conviction = context.config.close_conviction
    convinced = context.confidence >= context.config.close_min_confidence
    if context.regime == "liquidation_event":
        return "liquidation_event regime: close the open position"
    if position.side == "long":
        if price <= position.stop_loss_price:
            return "price reached the stop loss"
        if price >= position.take_profit_price:
            return "price reached the take profit"
        if convinced and p_up <= 0.5 - conviction:
            return f"model contradicts the long (p_up {p_up:.4f})"
    else:
        if price >= position.stop_loss_price:
            return "price reached the stop loss"
        if price <= position.take_profit_price:
            return "price reached the take profit"
        if convinced and p_up >= 0.5 + conviction:
            return f"model contradicts the short (p_up {p_up:.4f})"
    return None


def _manage_position(context: _Context, position: OpenPosition) -> RiskDecision:
    market = context.market
    open_risk = liquidation_risk(
        context.reference, position.liquidation_price, market.sigma_1m, context.model.horizon_minutes
    )
    parts = context.components(open_risk, context.concentration(0.0))
    reason = _close_reason(context, position)
    if reason is None:
        # an open position keeps its liquidation risk visible while the signal is hold
        return context.hold("position open: the model agrees or lacks conviction", parts, liquidation_risk=open_risk)
    # a close carries the fields of a hold plus what is being closed
    return replace(
        context.hold(reason, parts),
        signal_type="close",
        signal_strength=signal_strength(
            "close", context.confidence, context.config.strong_signal_confidence, position.side
        ),
        position_size_usdt=floor_to_cents(position.quantity * market.price),
        quantity=position.quantity,
        liquidation_price=position.liquidation_price,
        liquidation_risk=open_risk,
    )


class _Deny(Exception):
    """An entry refused by one of its checks: why, and the risk components known by then (if any)."""

    def __init__(self, reason: str, components: Mapping[str, float] | None = None) -> None:
        super().__init__(reason)
        self.reason, self.components = reason, components


def _consider_entry(context: _Context) -> RiskDecision:
    """A new position, if every check passes in turn; the first that refuses makes the bar a hold (the one deny
    path), with the risk factors gathered up to it."""
    factors: dict[str, float] = {}
    try:
        return _enter(context, factors)
    except _Deny as deny:
        return context.hold(deny.reason, deny.components, MappingProxyType(factors) if factors else _EMPTY)


def _enter(context: _Context, factors: dict[str, float]) -> RiskDecision:
    _check_trading_open(context)
    side: Side = "long" if context.model.p_up > 0.5 else "short"
    edge, cost = _check_edge(context, side, factors)
    stop, target, stop_fraction, take_profit_fraction, reward_risk = _check_stops(context, side)
    market, config, horizon = context.market, context.config, context.model.horizon_minutes
    brackets = config.brackets_for_symbol(market.symbol)
    largest_usdt, leverage, leverage_bound = _check_leverage(context, side, stop, brackets, factors)
    entry, reference = market.price, context.reference
    bound_liquidation = liquidation_price(side, entry, largest_usdt / entry, leverage, brackets)
    bound_risk = liquidation_risk(reference, bound_liquidation, market.sigma_1m, horizon)
    parts = context.components(bound_risk, context.concentration(largest_usdt))
    score = risk_score(parts)
    size_usdt, size_binding = _check_size(context, edge, stop, target, reward_risk, score, parts, factors)
    # the trading state is ACTIVE here (checked first), so only the account's limits remain
    portfolio = context.portfolio
    size_usdt, refused_by, binding_limit, _ = limit_candidate(
        market.symbol, size_usdt, leverage, portfolio, config.limits, context.exposures_usdt
    )
    if refused_by is not None:
        raise _Deny(f"refused by the portfolio limit {refused_by}", parts)
    impact = portfolio_impact(size_usdt, portfolio, config.limits)
    quantity = size_usdt / entry
    final_liquidation = liquidation_price(side, entry, quantity, leverage, brackets)
    context.reasons.append(
        f"{side}: edge {edge * 1e4:.2f} bps over cost {cost * 1e4:.2f} bps; {leverage_bound}; "
        f"size bound by {binding_limit or size_binding}"
    )
    # positional, in the order of RiskDecision's fields (as in `_Context.hold`)
    decision = RiskDecision(
        side,  # signal_type
        signal_strength(side, context.confidence, config.strong_signal_confidence),  # signal_strength
        context.confidence,  # confidence_score
        risk_level(score),  # risk_level
        context.regime,  # market_regime
        entry,  # entry_price
        leverage,  # recommended_leverage
        size_usdt,  # position_size_usdt
        quantity,  # quantity
        stop,  # stop_loss_price
        target,  # take_profit_price
        reward_risk,  # risk_reward_ratio
        final_liquidation,  # liquidation_price
        score,  # risk_score
        liquidation_risk(reference, final_liquidation, market.sigma_1m, horizon),  # liquidation_risk
        impact,  # portfolio_impact
        context.volatility,  # volatility_score
        context.liquidity,  # liquidity_score
        MappingProxyType(parts),  # risk_components
        tuple(context.reasons),  # reasons
        context.regime_state,  # regime_state
        config.base_position_usdt,  # base_position_size
        float(leverage),  # leverage_multiplier
        stop_fraction / config.stops.base_stop_fraction,  # stop_loss_adjustment
        take_profit_fraction / config.stops.base_take_profit_fraction,  # take_profit_adjustment
        context.confidence * (1.0 - score / 100.0),  # confidence_boost
        MappingProxyType(factors),  # risk_factors
        context.state,  # trading_state
        market.symbol,  # symbol
    )
    violations = invariant_violations(decision, config, brackets)
    if violations:
        context.reasons.pop()
        raise _Deny("invariant not met: " + "; ".join(violations), parts)
    return decision


def _check_trading_open(context: _Context) -> None:
    """No new position in a liquidation cascade, outside the ACTIVE state, or without a favoured direction."""
    if context.regime == "liquidation_event":
        raise _Deny("liquidation_event regime: no new positions")
    if context.state != "ACTIVE":
        raise _Deny(f"trading state {context.state}: no new positions")
    if context.model.p_up == 0.5:
        raise _Deny("the model favours no direction")


def _check_edge(context: _Context, side: Side, factors: dict[str, float]) -> tuple[float, float]:
    """The expected edge over the horizon and the round-trip cost: the edge must cover the cost's multiple."""
    model, config = context.model, context.config
    p_direction = model.p_up if side == "long" else 1.0 - model.p_up
    edge = expected_edge_fraction(p_direction, context.market.sigma_1m, model.horizon_minutes)
    cost = config.round_trip_cost_fraction
    factors["expected_edge_bps"], factors["round_trip_cost_bps"] = edge * 1e4, cost * 1e4
    if edge < config.min_edge_to_cost * cost:
        raise _Deny(
            f"expected edge {edge * 1e4:.2f} bps does not cover {config.min_edge_to_cost} × round-trip cost "
            f"{cost * 1e4:.2f} bps"
        )
    return edge, cost


def _check_stops(context: _Context, side: Side) -> tuple[float, float, float, float, float]:
    """Stop-loss and take-profit (with their fractions of the entry and the risk-reward ratio); refused when the
    mark price already stands at or past the stop."""
    market = context.market
    stop, target, stop_fraction, take_profit_fraction, reward_risk, _ = stop_levels(
        side,
        market.price,
        market.atr,
        market.sigma_1m,
        context.model.horizon_minutes,
        context.regime,
        context.config.stops,
    )
    reference = context.reference
    mark_past_stop = reference <= stop if side == "long" else reference >= stop
    if mark_past_stop or stop == market.price:
        raise _Deny("the mark price is already at or beyond the stop")
    return stop, target, stop_fraction, take_profit_fraction, reward_risk


def _check_leverage(
    context: _Context, side: Side, stop: float, brackets: BracketTable, factors: dict[str, float]
) -> tuple[float, int, str]:
    """The largest size the base rule can give (before the risk discount) fixes the highest bracket any final
    size can fall in; the leverage safe there is safe for every smaller size. Returns that size, the leverage
    and what bound it."""
    market, config = context.market, context.config
    regime_multiplier = REGIME_SIZE_MULTIPLIER[context.regime]
    largest_usdt = floor_to_cents(config.base_position_usdt * context.confidence * regime_multiplier)
    if largest_usdt < config.limits.min_position_usdt:
        raise _Deny("size below the minimum order")
    try:
        caps = leverage_caps(
            side,
            market.price,
            largest_usdt / market.price,
            stop,
            brackets,
            config.max_leverage,
            config.min_liquidation_buffer,
            market.sigma_1m,
            context.model.horizon_minutes,
            config.regime_leverage_factor[context.regime],
            config.leverage_adverse_sigmas,
            config.leverage_max_margin_loss,
        )
    except ValueError as error:
        raise _Deny(f"no bracket for the position: {error}") from None
    stop_buffer, bracket, configured, volatility, regime = caps
    factors["leverage_cap_stop_buffer"] = float(stop_buffer)
    factors["leverage_cap_bracket"] = float(bracket)
    factors["leverage_cap_config"] = float(configured)
    factors["leverage_cap_volatility"] = float(volatility)
    factors["leverage_cap_regime"] = float(regime)
    binding = binding_cap_index(caps)
    leverage = caps[binding]
    if not leverage >= 1:
        raise _Deny(no_leverage_reason(LEVERAGE_CAPS[binding], leverage))
    return largest_usdt, leverage, leverage_reason(leverage, LEVERAGE_CAPS[binding])


def _check_size(
    context: _Context,
    edge: float,
    stop: float,
    target: float,
    reward_risk: float,
    score: float,
    parts: Mapping[str, float],
    factors: dict[str, float],
) -> tuple[float, str]:
    """The size from confidence, risk, regime, equity and the bracket's odds, and the bound that sets it; at
    least the minimum order."""
    market, config = context.market, context.config
    entry = market.price
    stop_fraction = abs(entry - stop) / entry
    take_profit_fraction = abs(target - entry) / entry
    win_probability = bracket_win_probability(
        edge / context.model.horizon_minutes, market.sigma_1m, stop_fraction, take_profit_fraction
    )
    bounds = size_bounds(
        config.base_position_usdt,
        context.confidence,
        score,
        context.regime,
        context.portfolio.equity,
        config.risk_fraction,
        config.kelly_fraction,
        win_probability,
        reward_risk,
        stop_fraction,
    )
    size_usdt, binding = bound_size(bounds)
    factors["bracket_win_probability"] = win_probability
    factors["size_bound_base_rule_usdt"], factors["size_bound_risk_budget_usdt"], factors["size_bound_kelly_usdt"] = (
        bounds
    )
    if size_usdt < config.limits.min_position_usdt:
        raise _Deny(f"size {size_usdt} USDT below the minimum order (bound by {SIZE_BOUNDS[binding]})", parts)
    return size_usdt, SIZE_BOUNDS[binding]


def invariant_violations(decision: RiskDecision, config: RiskConfig, brackets: BracketTable | None = None) -> list[str]:
    """Every invariant of the signals contract that the decision breaks (empty when it keeps them all).

    `brackets` defaults to the table the config gives the decision's symbol.
    """
    problems: list[str] = []
    if not 0.0 <= decision.risk_score <= 100.0:
        problems.append(f"risk_score {decision.risk_score} outside 0..100")
    if not 0.0 <= decision.liquidation_risk <= 100.0:
        problems.append(f"liquidation_risk {decision.liquidation_risk} outside 0..100")
    if not 0.0 <= decision.confidence_score <= 1.0:
        problems.append(f"confidence_score {decision.confidence_score} outside 0..1")
    if decision.signal_type == "hold":
        carried = [name for name in POSITION_FIELDS if getattr(decision, name) is not None]
        if carried:
            problems.append("hold carries " + ", ".join(carried))
        return problems
    if decision.signal_type == "close":
        return problems
    side: Side = "long" if decision.signal_type == "long" else "short"
    entry = decision.entry_price
    stop = decision.stop_loss_price
    target = decision.take_profit_price
    liquidation = decision.liquidation_price
    leverage = decision.recommended_leverage
    size = decision.position_size_usdt
    quantity = decision.quantity
    if (
        stop is None
        or target is None
        or liquidation is None
        or leverage is None
        or size is None
        or quantity is None
        or decision.risk_reward_ratio is None
    ):
        return [*problems, f"{side} lacks a price, size or leverage"]
    if side == "long" and not liquidation < stop < entry < target:
        problems.append("long prices out of order (liquidation < stop < entry < target)")
    if side == "short" and not 0.0 < target < entry < stop < liquidation:
        problems.append("short prices out of order (target < entry < stop < liquidation)")
    if not stop_precedes_liquidation(side, entry, stop, liquidation, config.min_liquidation_buffer):
        problems.append("stop not ahead of liquidation by the buffer")
    if (
        isinstance(leverage, bool)
        or not isinstance(leverage, int)
        or not 1 <= leverage <= min(EXCHANGE_MAX_LEVERAGE, config.max_leverage)
    ):
        problems.append(f"leverage {leverage} outside 1..{config.max_leverage}")
        return problems
    table = brackets if brackets is not None else config.brackets_for_symbol(decision.symbol)
    try:
        if leverage > table.max_leverage_for_notional(quantity * entry):
            problems.append(f"leverage {leverage} above the bracket maximum")
        if liquidation_price(side, entry, quantity, leverage, table) != liquidation:
            problems.append("liquidation price differs from the exchange formula")
    except ValueError as error:
        problems.append(str(error))
    if decision.risk_reward_ratio != risk_reward_ratio(entry, stop, target):
        problems.append("risk_reward_ratio differs from |tp − entry| / |entry − sl|")
    rule = (
        config.base_position_usdt
        * decision.confidence_score
        * (1.0 - decision.risk_score / 100.0)
        * REGIME_SIZE_MULTIPLIER[decision.market_regime]
    )
    if size > rule or size <= 0.0:
        problems.append(f"size {size} USDT outside (0, base rule {rule}]")
    return problems
