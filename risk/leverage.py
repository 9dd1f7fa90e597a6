"""The leverage a position may use: the stop must trigger well before liquidation.

Sizing rule: a position's size is its notional in USDT; leverage only decides the margin posted
(margin = notional / leverage). The notional therefore fixes the bracket, and the leverage search never moves
the position into another bracket.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from risk.liquidation import Bracket, BracketTable, liquidation_price
from risk.types import Side

EXCHANGE_MAX_LEVERAGE = 125


def stop_precedes_liquidation(
    side: Side,
    entry_price: float,
    stop_loss_price: float,
    liquidation_price_: float,
    min_buffer_fraction: float,
) -> bool:
    """Whether the stop lies between entry and liquidation with |stop − liq| ≥ buffer × entry.

    A long that cannot be liquidated (liquidation price 0.0) is safe when its stop is at least the buffer
    above 0.
    """
    if side == "long":
        beyond = liquidation_price_ < stop_loss_price < entry_price
    else:
        beyond = entry_price < stop_loss_price < liquidation_price_
    return beyond and abs(stop_loss_price - liquidation_price_) >= min_buffer_fraction * entry_price


def max_safe_leverage(
    side: Side,
    entry_price: float,
    quantity: float,
    stop_loss_price: float,
    brackets: BracketTable,
    min_buffer_fraction: float,
) -> int:
    """The largest integer leverage (≤ the bracket maximum) whose liquidation lies beyond the stop with the
    buffer.

    0 when even 1x is not safe. Solved in closed form from the isolated-margin formula, then checked against
    `liquidation_price` itself so that rounding can never let an unsafe leverage through.
    """
    bracket = brackets.bracket_for_notional(quantity * entry_price)
    return _max_safe_leverage_in(side, entry_price, quantity, stop_loss_price, brackets, bracket, min_buffer_fraction)


def _max_safe_leverage_in(
    side: Side,
    entry_price: float,
    quantity: float,
    stop_loss_price: float,
    brackets: BracketTable,
    bracket: Bracket,
    min_buffer_fraction: float,
) -> int:
    """`max_safe_leverage` once the bracket of the notional is known."""
    notional_usdt = quantity * entry_price
    rate = bracket.maintenance_margin_rate
    cum_usdt = bracket.maintenance_amount_usdt
    if side == "long":
        # LP ≤ X  ⇔  N/L ≥ N − cum − X·Q·(1 − MMR)
        farthest_allowed = stop_loss_price - min_buffer_fraction * entry_price
        required_margin_usdt = notional_usdt - cum_usdt - farthest_allowed * quantity * (1.0 - rate)
    else:
        # LP ≥ X  ⇔  N/L ≥ X·Q·(1 + MMR) − N − cum
        farthest_allowed = stop_loss_price + min_buffer_fraction * entry_price
        required_margin_usdt = farthest_allowed * quantity * (1.0 + rate) - notional_usdt - cum_usdt
    if required_margin_usdt <= 0.0:
        leverage = bracket.max_leverage
    else:
        leverage = math.floor(notional_usdt / required_margin_usdt)
        if not leverage < bracket.max_leverage:  # min(bracket.max_leverage, leverage)
            leverage = bracket.max_leverage
    while leverage >= 1:
        price = liquidation_price(side, entry_price, quantity, leverage, brackets)
        if stop_precedes_liquidation(side, entry_price, stop_loss_price, price, min_buffer_fraction):
            return leverage
        leverage -= 1
    return 0


def volatility_leverage_cap(
    sigma_1m: float,
    horizon_minutes: int,
    adverse_sigmas: float = 3.0,
    max_margin_loss_fraction: float = 0.5,
) -> int:
    """Leverage at which an adverse move of `adverse_sigmas` σ over the horizon costs at most that share of
    margin."""
    move_fraction = adverse_sigmas * sigma_1m * math.sqrt(horizon_minutes)
    if move_fraction <= 0.0:
        return EXCHANGE_MAX_LEVERAGE
    cap = math.floor(max_margin_loss_fraction / move_fraction)
    return cap if cap < EXCHANGE_MAX_LEVERAGE else EXCHANGE_MAX_LEVERAGE  # min(EXCHANGE_MAX_LEVERAGE, cap)


@dataclass(frozen=True, slots=True)
class LeverageChoice:
    """The leverage chosen (None: the position is not taken), each cap behind it, and the binding one."""

    leverage: int | None
    caps: Mapping[str, int]
    binding_cap: str

    @property
    def reason(self) -> str:
        """Why the leverage is what it is."""
        if self.leverage is None:
            return no_leverage_reason(self.binding_cap, self.caps[self.binding_cap])
        return leverage_reason(self.leverage, self.binding_cap)


def leverage_reason(leverage: int, binding_cap: str) -> str:
    """Why a position gets this leverage."""
    return f"leverage {leverage}x bound by the {binding_cap} cap"


def no_leverage_reason(binding_cap: str, cap: int) -> str:
    """Why a position gets no leverage: the binding cap is below 1."""
    return f"no safe leverage: the {binding_cap} cap is {cap}"


# the caps in the order they are listed (and a tie is bound): stop before liquidation, bracket, config,
# volatility, regime
LEVERAGE_CAPS = ("stop_buffer", "bracket", "config", "volatility", "regime")


def choose_leverage(
    side: Side,
    entry_price: float,
    quantity: float,
    stop_loss_price: float,
    brackets: BracketTable,
    *,
    max_leverage: int,
    min_buffer_fraction: float,
    sigma_1m: float,
    horizon_minutes: int,
    regime_factor: float,
    adverse_sigmas: float = 3.0,
    max_margin_loss_fraction: float = 0.5,
) -> LeverageChoice:
    """The largest integer leverage within every cap: stop before liquidation, bracket, config, volatility,
    regime.

    `regime_factor` scales the volatility cap (1.0 in calm regimes, lower in wild ones, 0 refuses).
    """
    caps = leverage_caps(
        side,
        entry_price,
        quantity,
        stop_loss_price,
        brackets,
        max_leverage,
        min_buffer_fraction,
        sigma_1m,
        horizon_minutes,
        regime_factor,
        adverse_sigmas,
        max_margin_loss_fraction,
    )
    binding = binding_cap_index(caps)
    leverage = caps[binding]
    return LeverageChoice(
        leverage if leverage >= 1 else None,
        MappingProxyType(dict(zip(LEVERAGE_CAPS, caps, strict=True))),
        LEVERAGE_CAPS[binding],
    )


def leverage_caps(
    side: Side,
    entry_price: float,
    quantity: float,
    stop_loss_price: float,
    brackets: BracketTable,
    max_leverage: int,
    min_buffer_fraction: float,
    sigma_1m: float,
    horizon_minutes: int,
    regime_factor: float,
    adverse_sigmas: float,
    max_margin_loss_fraction: float,
) -> tuple[int, int, int, int, int]:
    """Each cap of `choose_leverage`, in the order of `LEVERAGE_CAPS` (the arguments are the same)."""
    volatility_cap = volatility_leverage_cap(sigma_1m, horizon_minutes, adverse_sigmas, max_margin_loss_fraction)
    bracket = brackets.bracket_for_notional(quantity * entry_price)  # one lookup serves the first two caps
    return (
        _max_safe_leverage_in(side, entry_price, quantity, stop_loss_price, brackets, bracket, min_buffer_fraction),
        bracket.max_leverage,
        max_leverage,
        volatility_cap,
        math.floor(volatility_cap * regime_factor),
    )


def binding_cap_index(caps: tuple[int, ...]) -> int:
    """Where the smallest cap stands; the first of equal ones, as min() picks it."""
    binding = 0
    for index in range(1, len(caps)):
        if caps[index] < caps[binding]:
            binding = index
    return binding
