"""Liquidation prices on Binance USD-M perpetual futures, isolated and cross margin (one-way mode).

Leverage brackets are data (`risk/brackets/*.json`): the exchange changes them from time to time, so the
tables are refreshed as files, never edited in code. The maintenance amount (`cum`) of each bracket is
derived by continuity, `cum_n = cum_{n-1} + floor_n × (MMR_n − MMR_{n-1})`, which makes the maintenance
margin a continuous function of the notional.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

from risk.types import Side


@dataclass(frozen=True, slots=True)
class Bracket:
    """One notional bracket: positions with floor < notional ≤ cap get this leverage cap and margin rate."""

    notional_floor_usdt: float
    notional_cap_usdt: float
    max_leverage: int
    maintenance_margin_rate: float
    maintenance_amount_usdt: float


@dataclass(frozen=True, slots=True)
class BracketTable:
    """The leverage brackets of one symbol, lowest notional first."""

    symbol: str
    brackets: tuple[Bracket, ...]

    @classmethod
    def from_rows(cls, symbol: str, rows: Sequence[Mapping[str, Any]]) -> BracketTable:
        """Build a table from rows of floor, cap, max leverage and rate; derives `cum` by continuity."""
        if not rows:
            raise ValueError(f"{symbol}: a bracket table needs at least one bracket")
        brackets: list[Bracket] = []
        for row in rows:
            floor_usdt = float(row["notional_floor_usdt"])
            cap_usdt = float(row["notional_cap_usdt"])
            max_leverage = int(row["max_leverage"])
            rate = float(row["maintenance_margin_rate"])
            if brackets:
                previous = brackets[-1]
                if floor_usdt != previous.notional_cap_usdt:
                    raise ValueError(f"{symbol}: bracket floor {floor_usdt} does not continue the previous cap")
                if rate < previous.maintenance_margin_rate or max_leverage > previous.max_leverage:
                    raise ValueError(f"{symbol}: brackets must tighten as the notional grows")
                cum_usdt = previous.maintenance_amount_usdt + floor_usdt * (rate - previous.maintenance_margin_rate)
            else:
                if floor_usdt != 0.0:
                    raise ValueError(f"{symbol}: the first bracket must start at a notional of 0")
                cum_usdt = 0.0
            if cap_usdt <= floor_usdt or not 1 <= max_leverage <= 125 or not 0.0 < rate < 1.0:
                raise ValueError(f"{symbol}: malformed bracket {dict(row)}")
            if rate > 1.0 / max_leverage:
                raise ValueError(f"{symbol}: maintenance rate above the initial margin rate in {dict(row)}")
            brackets.append(Bracket(floor_usdt, cap_usdt, max_leverage, rate, cum_usdt))
        return cls(symbol, tuple(brackets))

    def bracket_for_notional(self, notional_usdt: float) -> Bracket:
        """The bracket whose range (floor, cap] holds the notional; ValueError above the last cap."""
        for bracket in self.brackets:
            if notional_usdt <= bracket.notional_cap_usdt:
                return bracket
        raise ValueError(
            f"{self.symbol}: notional {notional_usdt} USDT is above the largest bracket "
            f"({self.brackets[-1].notional_cap_usdt} USDT)"
        )

    def max_leverage_for_notional(self, notional_usdt: float) -> int:
        """The exchange's leverage cap for a position of this notional."""
        return self.bracket_for_notional(notional_usdt).max_leverage


def _load_table(name: str) -> BracketTable:
    text = resources.files("risk").joinpath("brackets", f"{name}.json").read_text(encoding="utf-8")
    document = json.loads(text)
    return BracketTable.from_rows(document["symbol"], document["brackets"])


BTCUSDT_BRACKETS = _load_table("BTCUSDT")
ETHUSDT_BRACKETS = _load_table("ETHUSDT")
DEFAULT_BRACKETS = _load_table("DEFAULT")
_TABLES: Mapping[str, BracketTable] = MappingProxyType({"BTCUSDT": BTCUSDT_BRACKETS, "ETHUSDT": ETHUSDT_BRACKETS})


def brackets_for(symbol: str) -> BracketTable:
    """The bracket table of a symbol (`BTCUSDT` or `BTC/USDT`); the conservative default for unknown
    symbols."""
    return _TABLES.get(symbol.replace("/", "").upper(), DEFAULT_BRACKETS)


def _side_sign(side: str) -> int:
    if side == "long":
        return 1
    if side == "short":
        return -1
    raise ValueError(f"side must be 'long' or 'short', got {side!r}")


_INF = float("inf")


def _check_positive(name: str, value: float) -> None:
    # `not value > 0` also rejects NaN
    if not value > 0.0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def maintenance_margin_usdt(notional_usdt: float, brackets: BracketTable) -> float:
    """Maintenance margin of a position: notional × MMR − cum of its bracket."""
    bracket = brackets.bracket_for_notional(notional_usdt)
    return notional_usdt * bracket.maintenance_margin_rate - bracket.maintenance_amount_usdt


def liquidation_price(
    side: Side | str,
    entry_price: float,
    quantity: float,
    leverage: float,
    brackets: BracketTable,
) -> float:
    """Isolated-margin liquidation price, as Binance USD-M computes it.

    `WB = quantity × entry / leverage`, `LP = (WB + cum − s·Q·EP) / (Q·MMR − s·Q)` with s = +1 long, −1 short
    and MMR, cum from the bracket of the entry notional. A long that cannot be liquidated returns 0.0.
    """
    sign = 1 if side == "long" else -1 if side == "short" else _side_sign(side)
    if not (0.0 < entry_price < _INF and 0.0 < quantity < _INF and 0.0 < leverage < _INF):  # NaN fails too
        _check_positive("entry_price", entry_price)
        _check_positive("quantity", quantity)
        _check_positive("leverage", leverage)
    notional_usdt = quantity * entry_price
    bracket = brackets.bracket_for_notional(notional_usdt)
    if leverage > bracket.max_leverage:
        raise ValueError(
            f"leverage {leverage} is above the bracket maximum {bracket.max_leverage} "
            f"for a notional of {notional_usdt} USDT"
        )
    wallet_balance_usdt = notional_usdt / leverage
    price = (wallet_balance_usdt + bracket.maintenance_amount_usdt - sign * notional_usdt) / (
        quantity * bracket.maintenance_margin_rate - sign * quantity
    )
    return 0.0 if price < 0.0 else price  # max(price, 0.0), without the call


@dataclass(frozen=True, slots=True)
class MarginPosition:
    """An open position in a cross-margin account (one-way mode), valued at its mark price."""

    symbol: str
    side: Side
    quantity: float
    entry_price: float
    mark_price: float
    brackets: BracketTable

    @property
    def unrealized_pnl_usdt(self) -> float:
        """Profit or loss at the mark price."""
        return _side_sign(self.side) * self.quantity * (self.mark_price - self.entry_price)

    @property
    def maintenance_margin_usdt(self) -> float:
        """Maintenance margin at the mark-price notional, as the exchange charges it."""
        return maintenance_margin_usdt(self.quantity * self.mark_price, self.brackets)


def cross_liquidation_price(
    position: MarginPosition,
    other_positions: Sequence[MarginPosition],
    wallet_balance_usdt: float,
) -> float:
    """Cross-margin liquidation price of `position`, with the other positions held at their mark prices.

    Binance's formula for one-way mode:
    `LP = (WB − TMM1 + UPNL1 + cum − s·Q·EP) / (Q·MMR − s·Q)`, where TMM1 and UPNL1 are the maintenance
    margin and the unrealised PnL of every other position. A long that cannot be liquidated returns 0.0.
    """
    sign = _side_sign(position.side)
    _check_positive("entry_price", position.entry_price)
    _check_positive("quantity", position.quantity)
    if any(other.symbol == position.symbol for other in other_positions):
        raise ValueError(f"{position.symbol}: one-way mode holds a single position per symbol")
    other_maintenance_usdt = sum(other.maintenance_margin_usdt for other in other_positions)
    other_pnl_usdt = sum(other.unrealized_pnl_usdt for other in other_positions)
    bracket = position.brackets.bracket_for_notional(position.quantity * position.entry_price)
    price = (
        wallet_balance_usdt
        - other_maintenance_usdt
        + other_pnl_usdt
        + bracket.maintenance_amount_usdt
        - sign * position.quantity * position.entry_price
    ) / (position.quantity * bracket.maintenance_margin_rate - sign * position.quantity)
    return max(price, 0.0)
