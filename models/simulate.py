"""The virtual position of one symbol: opened and closed by its own signals, stopped out on later bars.

Shared by the live engine (paper position per symbol) and the backtest. Exits are checked against each later
bar's high and low: a bar that opens beyond the liquidation price liquidates (the margin is lost); one that
opens beyond the stop fills at its open; otherwise a stop inside the range fills at the stop, before any
take-profit in the same bar (pessimistic: the path inside a bar is unknown). Every fill pays the taker fee and
slippage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.bars import Bar
from risk.types import OpenPosition


@dataclass(frozen=True, slots=True)
class FillCosts:
    """Taker fee per side (fraction of notional) and slippage per fill (bps, always against us)."""

    taker_fee_rate: float = 0.0004
    slippage_bps: float = 1.0


@dataclass(frozen=True, slots=True)
class ClosedTrade:
    """One round trip, in USDT net of fees."""

    side: str
    entry_price: float
    exit_price: float
    quantity: float
    pnl_usdt: float
    fees_usdt: float
    reason: str  # "signal" | "stop_loss" | "take_profit" | "liquidation"
    opened_at_ms: int
    closed_at_ms: int


@dataclass(slots=True)
class VirtualBook:
    """A symbol's paper account: the open position (if any) and running totals."""

    position: OpenPosition | None = None
    entry_fee_usdt: float = 0.0
    realised_pnl_usdt: float = 0.0  # net of every fee paid
    fees_paid_usdt: float = 0.0
    trades: int = 0
    wins: int = 0
    liquidations: int = 0

    def unrealised_pnl_usdt(self, price: float) -> float:
        """Mark-to-market PnL of the open position at `price` (before exit costs)."""
        p = self.position
        if p is None:
            return 0.0
        sign = 1.0 if p.side == "long" else -1.0
        return sign * (price - p.entry_price) * p.quantity

    def to_dict(self) -> dict[str, Any]:
        p = self.position
        return {
            "position": None
            if p is None
            else [
                p.symbol,
                p.side,
                p.quantity,
                p.entry_price,
                p.leverage,
                p.stop_loss_price,
                p.take_profit_price,
                p.liquidation_price,
                p.opened_at_ms,
            ],
            "entry_fee_usdt": self.entry_fee_usdt,
            "realised_pnl_usdt": self.realised_pnl_usdt,
            "fees_paid_usdt": self.fees_paid_usdt,
            "trades": self.trades,
            "wins": self.wins,
            "liquidations": self.liquidations,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VirtualBook:
        raw = data["position"]
        position = (
            None
            if raw is None
            else OpenPosition(
                str(raw[0]),
                raw[1],
                float(raw[2]),
                float(raw[3]),
                int(raw[4]),
                float(raw[5]),
                float(raw[6]),
                float(raw[7]),
                int(raw[8]),
            )
        )
        return cls(
            position,
            float(data["entry_fee_usdt"]),
            float(data["realised_pnl_usdt"]),
            float(data["fees_paid_usdt"]),
            int(data["trades"]),
            int(data["wins"]),
            int(data["liquidations"]),
        )


def _slipped(price: float, side: str, opening: bool, costs: FillCosts) -> float:
    """Fill price after slippage: buying pays more, selling receives less."""
    buying = (side == "long") == opening
    factor = 1.0 + costs.slippage_bps / 1e4 if buying else 1.0 - costs.slippage_bps / 1e4
    return price * factor


def open_position(book: VirtualBook, position: OpenPosition, costs: FillCosts) -> None:
    """Enter at the signal's entry price plus slippage; stops and liquidation stay where risk put them."""
    if book.position is not None:
        raise ValueError("a position is already open")
    fill = _slipped(position.entry_price, position.side, True, costs)
    fee = fill * position.quantity * costs.taker_fee_rate
    book.position = OpenPosition(
        position.symbol,
        position.side,
        position.quantity,
        fill,
        position.leverage,
        position.stop_loss_price,
        position.take_profit_price,
        position.liquidation_price,
        position.opened_at_ms,
    )
    book.entry_fee_usdt = fee
    book.fees_paid_usdt += fee
    book.realised_pnl_usdt -= fee


def close_position(book: VirtualBook, price: float, reason: str, at_ms: int, costs: FillCosts) -> ClosedTrade:
    """Exit at `price` (slippage and fee applied; a liquidation loses exactly the margin)."""
    p = book.position
    if p is None:
        raise ValueError("no open position")
    sign = 1.0 if p.side == "long" else -1.0
    if reason == "liquidation":
        fill, fee = p.liquidation_price, 0.0
        gross = -p.margin_usdt  # isolated margin: the exchange keeps it all
        book.liquidations += 1
    else:
        fill = _slipped(price, p.side, False, costs)
        fee = fill * p.quantity * costs.taker_fee_rate
        gross = sign * (fill - p.entry_price) * p.quantity
    book.fees_paid_usdt += fee
    book.realised_pnl_usdt += gross - fee
    fees = fee + book.entry_fee_usdt
    net = gross - fees
    book.trades += 1
    book.wins += int(net > 0)
    book.position = None
    book.entry_fee_usdt = 0.0
    return ClosedTrade(p.side, p.entry_price, fill, p.quantity, net, fees, reason, p.opened_at_ms, at_ms)


def check_exits(book: VirtualBook, bar: Bar, costs: FillCosts) -> ClosedTrade | None:
    """Apply this bar's range to a position opened earlier: liquidation, stop, take-profit."""
    p = book.position
    if p is None or bar.halted or bar.open_time <= p.opened_at_ms:
        return None
    at = bar.close_time
    if p.side == "long":
        if p.liquidation_price > 0 and bar.open <= p.liquidation_price:
            return close_position(book, p.liquidation_price, "liquidation", at, costs)
        if bar.open <= p.stop_loss_price:
            return close_position(book, bar.open, "stop_loss", at, costs)
        if bar.low <= p.stop_loss_price:
            return close_position(book, p.stop_loss_price, "stop_loss", at, costs)
        if bar.high >= p.take_profit_price:
            return close_position(book, max(p.take_profit_price, bar.open), "take_profit", at, costs)
    else:
        if bar.open >= p.liquidation_price:
            return close_position(book, p.liquidation_price, "liquidation", at, costs)
        if bar.open >= p.stop_loss_price:
            return close_position(book, bar.open, "stop_loss", at, costs)
        if bar.high >= p.stop_loss_price:
            return close_position(book, p.stop_loss_price, "stop_loss", at, costs)
        if bar.low <= p.take_profit_price:
            return close_position(book, min(p.take_profit_price, bar.open), "take_profit", at, costs)
    return None
