"""Paper execution: trades the worker's own signals so that users see what they would have earned.

An actionable signal becomes a pending order, filled at the next bar's open with slippage and the taker fee;
later bars apply stop-loss, take-profit and liquidation to the open position (pessimistic inside a bar, the same
rules as the backtest, `models.simulate`). The account's trading state (risk.portfolio) gates new positions:
REDUCING and HALTED let only closes through. Every step is an execution log, the row of
`signal_execution_logs`: executed, rejected (with the reason), expired, closed or liquidated.

The books are per symbol (a worker owns its symbols' partitions); the account totals what this worker trades.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.bars import Bar, iso_utc
from models.simulate import ClosedTrade, FillCosts, VirtualBook, check_exits, close_position, open_position
from risk.portfolio import PortfolioLimits, trading_state_for
from risk.types import OpenPosition, PortfolioState


@dataclass(slots=True)
class PaperBook:
    """One symbol's paper position, its pending order and its running totals."""

    book: VirtualBook = field(default_factory=VirtualBook)
    pending: dict[str, Any] | None = None  # the signal waiting for the next bar
    pending_bars: int = 0
    open_signal_id: str | None = None
    last_price: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "book": self.book.to_dict(),
            "pending": self.pending,
            "pending_bars": self.pending_bars,
            "open_signal_id": self.open_signal_id,
            "last_price": self.last_price,
        }

    def unchanged_since(self, stored: Any) -> bool:
        """Whether `stored` (this book as last written) still restores it: flat then and now, nothing pending, the
        same totals. A flat book's last price moves every bar but is read only while a position is open, and the
        next bar sets it again, so most bars of most symbols need no write."""
        return (
            isinstance(stored, dict)
            and self.pending is None
            and self.book.position is None
            and stored.get("pending") is None
            and stored.get("pending_bars") == self.pending_bars
            and stored.get("open_signal_id") == self.open_signal_id
            and stored.get("book") == self.book.to_dict()
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PaperBook:
        return cls(
            VirtualBook.from_dict(data["book"]),
            data["pending"],
            int(data["pending_bars"]),
            data["open_signal_id"],
            float(data["last_price"]),
        )


@dataclass(slots=True)
class PaperAccount:
    """Account-level view across the symbols this worker trades."""

    initial_equity_usdt: float
    limits: PortfolioLimits = field(default_factory=PortfolioLimits)
    books: dict[str, PaperBook] = field(default_factory=dict)
    peak_equity_usdt: float = 0.0
    day_start_equity_usdt: float = 0.0
    day: int = -1

    def equity_usdt(self) -> float:
        return self.initial_equity_usdt + sum(
            b.book.realised_pnl_usdt + b.book.unrealised_pnl_usdt(b.last_price) for b in self.books.values()
        )

    def positions(self) -> tuple[OpenPosition, ...]:
        return tuple(b.book.position for b in self.books.values() if b.book.position is not None)

    def portfolio(self, at_ms: int) -> PortfolioState:
        equity = self.equity_usdt()
        day = at_ms // 86_400_000
        if day != self.day:
            self.day, self.day_start_equity_usdt = day, equity
        self.peak_equity_usdt = max(self.peak_equity_usdt, equity, self.initial_equity_usdt)
        state = PortfolioState(equity, self.peak_equity_usdt, self.day_start_equity_usdt, self.positions())
        return PortfolioState(
            state.equity,
            state.peak_equity,
            state.day_start_equity,
            state.positions,
            trading_state_for(state, self.limits),
        )

    def drawdown(self) -> float:
        peak = max(self.peak_equity_usdt, self.initial_equity_usdt)
        return max(0.0, 1.0 - self.equity_usdt() / peak) if peak > 0 else 0.0


class PaperBroker:
    """Pure paper-trading rules; the stream feeds it bars and signals and publishes what it returns."""

    def __init__(self, account: PaperAccount, costs: FillCosts) -> None:
        self.account = account
        self.costs = costs

    def book(self, symbol: str) -> PaperBook:
        book = self.account.books.get(symbol)
        if book is None:
            book = self.account.books[symbol] = PaperBook()
        return book

    def on_bar(self, bar: Bar) -> list[dict[str, Any]]:
        """Fill a pending order at this bar's open, then apply the bar's range to the open position."""
        paper = self.book(bar.symbol)
        logs: list[dict[str, Any]] = []
        if paper.pending is not None and not bar.halted:
            logs.append(self._fill(paper, bar))
        exit_trade = check_exits(paper.book, bar, self.costs)
        if exit_trade is not None:
            logs.append(self._closed_log(bar.symbol, paper, exit_trade))
        paper.last_price = bar.close
        return logs

    def on_signal(self, signal: dict[str, Any]) -> list[dict[str, Any]]:
        """Accept a signal as the next pending order, or reject it with the reason."""
        symbol = signal["symbol"]
        paper = self.book(symbol)
        kind = signal["signal_type"]
        if kind == "hold":
            return []
        if kind == "close":
            paper.pending, paper.pending_bars = signal, 0
            return []
        state = self.account.portfolio(signal["bar_close_time"]).trading_state
        if state != "ACTIVE":
            return [self._log(signal, "rejected", error=f"trading state {state}: only closing signals pass")]
        if paper.book.position is not None:
            return [self._log(signal, "rejected", error=f"a {paper.book.position.side} position is already open")]
        paper.pending, paper.pending_bars = signal, 0
        return []

    def _fill(self, paper: PaperBook, bar: Bar) -> dict[str, Any]:
        signal = paper.pending
        assert signal is not None
        paper.pending_bars += 1
        if signal["signal_type"] == "close":
            paper.pending = None
            if paper.book.position is None:
                return self._log(signal, "rejected", at_ms=bar.open_time, error="no open position to close")
            trade = close_position(paper.book, bar.open, "signal", bar.open_time, self.costs)
            return self._closed_log(bar.symbol, paper, trade)
        side = signal["signal_type"]
        stop, target = signal["stop_loss_price"], signal["take_profit_price"]
        beyond_stop = bar.open <= stop if side == "long" else bar.open >= stop
        beyond_target = bar.open >= target if side == "long" else bar.open <= target
        if beyond_stop or beyond_target:
            paper.pending = None
            return self._log(
                signal,
                "expired",
                at_ms=bar.open_time,
                error=f"next open {bar.open} is already beyond the {'stop' if beyond_stop else 'target'}",
            )
        quantity = float(signal["quantity"])
        open_position(
            paper.book,
            OpenPosition(
                bar.symbol,
                side,
                quantity,
                bar.open,
                int(signal["recommended_leverage"]),
                float(stop),
                float(target),
                float(signal["liquidation_price"]),
                bar.open_time - 1,
            ),
            self.costs,
        )
        paper.pending, paper.open_signal_id = None, signal["signal_id"]
        position = paper.book.position
        assert position is not None
        return self._log(
            signal,
            "executed",
            at_ms=bar.open_time,
            price=position.entry_price,
            extra={"fee_usdt": paper.book.entry_fee_usdt, "signal_entry_price": signal["entry_price"]},
        )

    def _closed_log(self, symbol: str, paper: PaperBook, trade: ClosedTrade) -> dict[str, Any]:
        status = "liquidated" if trade.reason == "liquidation" else "closed"
        signal_id = paper.open_signal_id or ""
        paper.open_signal_id = None
        return {
            "timestamp": iso_utc(trade.closed_at_ms),
            "signal_id": signal_id,
            "symbol": symbol,
            "execution_status": status,
            "execution_price": trade.exit_price,
            "execution_size": round(trade.exit_price * trade.quantity, 2),
            "execution_leverage": None,
            "actual_stop_loss": None,
            "actual_take_profit": None,
            "execution_time_ms": 0,
            "error_message": None,
            "metadata": {
                "reason": trade.reason,
                "pnl_usdt": trade.pnl_usdt,
                "fees_usdt": trade.fees_usdt,
                "entry_price": trade.entry_price,
                "side": trade.side,
                "opened_at_ms": trade.opened_at_ms,
            },
        }

    def _log(
        self,
        signal: dict[str, Any],
        status: str,
        at_ms: int | None = None,
        price: float | None = None,
        error: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        at = signal["bar_close_time"] + 1 if at_ms is None else at_ms
        executed = status == "executed"
        return {
            "timestamp": iso_utc(at),
            "signal_id": signal["signal_id"],
            "symbol": signal["symbol"],
            "execution_status": status,
            "execution_price": price,
            "execution_size": signal["position_size_usdt"] if executed else None,
            "execution_leverage": signal["recommended_leverage"] if executed else None,
            "actual_stop_loss": signal["stop_loss_price"] if executed else None,
            "actual_take_profit": signal["take_profit_price"] if executed else None,
            "execution_time_ms": max(0, at - signal["bar_close_time"] - 1),
            "error_message": error,
            "metadata": {"signal_type": signal["signal_type"], **(extra or {})},
        }
