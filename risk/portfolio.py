"""Portfolio limits, trading state, value at risk and the check of a candidate position."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from risk.normal import normal_quantile
from risk.sizing import floor_to_cents
from risk.types import TRADING_STATES, OpenPosition, PortfolioState, TradingState

__all__ = [
    "CandidateApproval",
    "OpenPosition",
    "PortfolioLimits",
    "PortfolioState",
    "check_candidate",
    "daily_loss_fraction",
    "drawdown_fraction",
    "effective_trading_state",
    "gross_exposure_usdt",
    "historical_var",
    "limit_candidate",
    "margin_used_usdt",
    "parametric_var",
    "portfolio_impact",
    "symbol_exposure_usdt",
    "trading_state_for",
]


@dataclass(frozen=True, slots=True)
class PortfolioLimits:
    """Account-wide limits; exposures and margin as multiples of equity, losses as fractions of equity."""

    max_gross_exposure: float = 3.0  # sum of notionals / equity
    max_symbol_exposure: float = 1.0  # one symbol's notional / equity
    max_margin_use: float = 0.5  # margin posted / equity
    max_open_positions: int = 5
    max_daily_loss: float = 0.05  # fraction of the day's starting equity
    max_drawdown: float = 0.15  # fraction of peak equity
    reduce_at: float = 0.8  # share of a loss limit at which only reducing trades pass
    min_position_usdt: float = 5.0  # smaller orders are not worth their fees (and the exchange refuses dust)

    def __post_init__(self) -> None:
        for name in ("max_gross_exposure", "max_symbol_exposure", "max_margin_use", "min_position_usdt"):
            value = getattr(self, name)
            if not 0.0 < value < math.inf:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name in ("max_daily_loss", "max_drawdown", "reduce_at"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must lie in (0, 1], got {value!r}")
        if (
            isinstance(self.max_open_positions, bool)
            or not isinstance(self.max_open_positions, int)
            or self.max_open_positions < 1
        ):
            raise ValueError(f"max_open_positions must be a positive integer, got {self.max_open_positions!r}")


def drawdown_fraction(portfolio: PortfolioState) -> float:
    """Loss from the peak as a fraction of the peak (0 at or above the peak)."""
    if portfolio.peak_equity <= 0.0:
        return 1.0
    drawdown = 1.0 - portfolio.equity / portfolio.peak_equity
    return drawdown if drawdown > 0.0 else 0.0  # max(0.0, drawdown): NaN counts as no drawdown


def daily_loss_fraction(portfolio: PortfolioState) -> float:
    """Loss since the start of the day as a fraction of the day's starting equity (0 when up)."""
    if portfolio.day_start_equity <= 0.0:
        return 1.0
    loss = 1.0 - portfolio.equity / portfolio.day_start_equity
    return loss if loss > 0.0 else 0.0  # max(0.0, loss): NaN counts as no loss


def trading_state_for(portfolio: PortfolioState, limits: PortfolioLimits) -> TradingState:
    """ACTIVE, REDUCING (near a loss limit: only closing trades) or HALTED (a loss limit reached)."""
    if portfolio.equity <= 0.0:
        return "HALTED"
    drawdown = drawdown_fraction(portfolio)
    daily_loss = daily_loss_fraction(portfolio)
    if drawdown >= limits.max_drawdown or daily_loss >= limits.max_daily_loss:
        return "HALTED"
    if drawdown >= limits.reduce_at * limits.max_drawdown or daily_loss >= limits.reduce_at * limits.max_daily_loss:
        return "REDUCING"
    return "ACTIVE"


_EMPTY: Mapping[str, float] = MappingProxyType({})
_STRICTNESS: Mapping[str, int] = MappingProxyType({state: rank for rank, state in enumerate(TRADING_STATES)})


def effective_trading_state(portfolio: PortfolioState, limits: PortfolioLimits) -> TradingState:
    """The stricter of the recorded state and the state the limits derive now (a halt is never lifted
    here)."""
    derived = trading_state_for(portfolio, limits)
    recorded = portfolio.trading_state
    return recorded if _STRICTNESS[recorded] >= _STRICTNESS[derived] else derived


def gross_exposure_usdt(positions: Sequence[OpenPosition]) -> float:
    """Sum of the positions' notionals at entry."""
    return sum([position.notional_usdt for position in positions])


def symbol_exposure_usdt(positions: Sequence[OpenPosition], symbol: str) -> float:
    """Notional held in one symbol."""
    return sum([position.notional_usdt for position in positions if position.symbol == symbol])


def margin_used_usdt(positions: Sequence[OpenPosition]) -> float:
    """Isolated margin posted across the positions."""
    return sum([position.margin_usdt for position in positions])


def historical_var(returns: Sequence[float], confidence: float = 0.99) -> float:
    """Historical value at risk: the loss (a positive fraction) exceeded with probability 1 − confidence.

    The quantile interpolates linearly between order statistics (numpy's default definition).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if not returns:
        raise ValueError("historical VaR needs at least one return")
    ordered = sorted(returns)
    position = (1.0 - confidence) * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    quantile = ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)
    return max(0.0, -quantile)


def parametric_var(sigma_per_sqrt_minute: float, horizon_minutes: float, confidence: float = 0.99) -> float:
    """Gaussian value at risk of a driftless position over the horizon: z × σ × √T, as a fraction of
    exposure."""
    if sigma_per_sqrt_minute < 0.0 or horizon_minutes < 0.0:
        raise ValueError("sigma and horizon must not be negative")
    return normal_quantile(confidence) * sigma_per_sqrt_minute * math.sqrt(horizon_minutes)


def portfolio_impact(notional_usdt: float, portfolio: PortfolioState, limits: PortfolioLimits) -> float:
    """The share of the account's gross-exposure budget a position of this notional would use, in 0..1."""
    budget_usdt = portfolio.equity * limits.max_gross_exposure
    if budget_usdt <= 0.0:
        return 1.0 if notional_usdt > 0.0 else 0.0
    share = notional_usdt / budget_usdt
    return 0.0 if share < 0.0 else 1.0 if share > 1.0 else share  # min(max(share, 0.0), 1.0)


@dataclass(frozen=True, slots=True)
class CandidateApproval:
    """Whether a new position may open, how large, and which limit refused or bound it."""

    approved: bool
    allowed_size_usdt: float
    refused_by: str | None
    binding_limit: str | None
    portfolio_impact: float
    headroom_usdt: Mapping[str, float]


def check_candidate(
    symbol: str,
    notional_usdt: float,
    leverage: int,
    portfolio: PortfolioState,
    limits: PortfolioLimits,
    trading_state: TradingState | None = None,
) -> CandidateApproval:
    """Check a new position against the account's limits and cut it to the largest size they allow.

    Refused when the trading state is not ACTIVE, when the symbol already holds a position, when the number
    of open positions is at its limit, or when the largest allowed size is under `min_position_usdt`.
    `trading_state` is `effective_trading_state(portfolio, limits)` when the caller has it already.
    """
    state = effective_trading_state(portfolio, limits) if trading_state is None else trading_state
    if state != "ACTIVE":
        return CandidateApproval(False, 0.0, "trading_state", "trading_state", 0.0, _EMPTY)
    allowed_usdt, refused_by, binding, headroom = limit_candidate(symbol, notional_usdt, leverage, portfolio, limits)
    frozen_headroom = _EMPTY if headroom is None else MappingProxyType(headroom)
    if refused_by is not None:
        return CandidateApproval(False, 0.0, refused_by, binding, 0.0, frozen_headroom)
    return CandidateApproval(
        True, allowed_usdt, None, binding, portfolio_impact(allowed_usdt, portfolio, limits), frozen_headroom
    )


def limit_candidate(
    symbol: str,
    notional_usdt: float,
    leverage: int,
    portfolio: PortfolioState,
    limits: PortfolioLimits,
    exposures_usdt: tuple[float, float] | None = None,
) -> tuple[float, str | None, str | None, dict[str, float] | None]:
    """The limits part of `check_candidate`, for an ACTIVE account: (allowed size, refused by, binding limit,
    headroom), with the allowed size 0.0 when refused and no headroom when refused before it is measured.

    `exposures_usdt` is (gross exposure, exposure in `symbol`) when the caller has them already. No approval
    object is built, so the risk decision can run the check on every bar cheaply.
    """
    positions = portfolio.positions
    for position in positions:
        if position.symbol == symbol:
            return 0.0, "open_position_in_symbol", "open_position_in_symbol", None
    if len(positions) >= limits.max_open_positions:
        return 0.0, "max_open_positions", "max_open_positions", None
    if exposures_usdt is None:
        exposures_usdt = gross_exposure_usdt(positions), symbol_exposure_usdt(positions, symbol)
    gross_usdt, symbol_usdt = exposures_usdt
    equity_usdt = portfolio.equity
    gross_room = equity_usdt * limits.max_gross_exposure - gross_usdt
    symbol_room = equity_usdt * limits.max_symbol_exposure - symbol_usdt
    margin_room = (equity_usdt * limits.max_margin_use - margin_used_usdt(positions)) * leverage
    # the first smallest headroom binds, as min() over them picks it (a NaN never binds)
    binding, room_usdt = "requested", notional_usdt
    if gross_room < room_usdt:
        binding, room_usdt = "max_gross_exposure", gross_room
    if symbol_room < room_usdt:
        binding, room_usdt = "max_symbol_exposure", symbol_room
    if margin_room < room_usdt:
        binding, room_usdt = "max_margin_use", margin_room
    allowed_usdt = floor_to_cents(0.0 if room_usdt < 0.0 else room_usdt)  # max(room_usdt, 0.0)
    headroom = {
        "requested": notional_usdt,
        "max_gross_exposure": gross_room,
        "max_symbol_exposure": symbol_room,
        "max_margin_use": margin_room,
    }
    if allowed_usdt < limits.min_position_usdt:
        refused_by = "min_position_usdt" if binding == "requested" else binding
        return 0.0, refused_by, binding, headroom
    return allowed_usdt, None, None if binding == "requested" else binding, headroom
