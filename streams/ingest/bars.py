"""1-minute bars from trades or klines, in exchange event time, with allowed lateness and duplicate removal.

Bars come from trades where trades exist and from closed klines otherwise: a closed kline becomes the bar of
its minute only while the symbol has no bar in the making from trades. Among trade kinds (trades, aggTrades,
generic ticks) the first one seen for a symbol is its source and the others are counted and ignored, so that one
symbol's volume is never counted twice. A trade belongs to the
minute of its trade time; a minute's bar closes once the symbol's watermark (the latest event time seen) has
passed the end of the minute by the allowed lateness. A trade for a minute whose bar has already closed is
late and dropped. A trade whose id the minute's bar has already taken is a duplicate: each open bar keeps the ids
it took as ranges (Binance's ids run on in steps of one, so a minute's ids are one range or a few), never a
high-water mark that one forged id far ahead would move past every genuine trade to come. An id further ahead of
the highest one seen than the exchange could have traded since (`MAX_ID_JUMP` plus `MAX_IDS_PER_S` a second of
trade time) is refused as implausible. Minutes without trades produce no bar: a gap, which the features treat as
missing.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from models.bars import MINUTE_MS, Bar
from streams.ingest.events import Kline, Trade

ACCEPTED, DUPLICATE, LATE, IGNORED = "accepted", "duplicate", "late", "ignored"
TOO_SCATTERED = "id_ranges_full"  # a minute already holds MAX_ID_RANGES separate runs of ids
IMPLAUSIBLE_ID = "implausible_trade_id"  # an id too far ahead of the highest seen
REFUSED = (TOO_SCATTERED, IMPLAUSIBLE_ID)  # outcomes that park the trade in the DLQ rather than count it
MAX_ID_RANGES = 256  # runs of consecutive trade ids per open minute; a genuine minute has one, or a few after gaps
# Binance's ids grow by one a trade; BTCUSDT's busiest minute from 2023 to 2025 had 149,713 trades (2,500 a
# second), so a jump beyond these bounds is not a feed that dropped trades but a forged or foreign id
MAX_ID_JUMP = 50_000
MAX_IDS_PER_S = 20_000


@dataclass(slots=True)
class OpenBar:
    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    quote_volume: float = 0.0
    trades: int = 0
    taker_buy_base: float = 0.0
    taker_buy_quote: float = 0.0
    sides_known: bool = True
    ids: list[list[int]] = field(default_factory=list)  # runs [first, last] of the trade ids taken, ascending

    def take_id(self, trade_id: int) -> str:
        """Record a trade id: ACCEPTED if new to this minute, DUPLICATE if taken, TOO_SCATTERED if no room."""
        runs = self.ids
        if runs and runs[-1][1] + 1 == trade_id:  # the usual case: the next id of the stream
            runs[-1][1] = trade_id
            return ACCEPTED
        i = bisect_right(runs, trade_id, key=lambda run: run[0])  # runs[i - 1] starts at or before the id
        if i and trade_id <= runs[i - 1][1]:
            return DUPLICATE
        joins_before = bool(i) and runs[i - 1][1] + 1 == trade_id
        joins_after = i < len(runs) and runs[i][0] == trade_id + 1
        if joins_before and joins_after:
            runs[i - 1][1] = runs.pop(i)[1]
        elif joins_before:
            runs[i - 1][1] = trade_id
        elif joins_after:
            runs[i][0] = trade_id
        elif len(runs) >= MAX_ID_RANGES:
            return TOO_SCATTERED
        else:
            runs.insert(i, [trade_id, trade_id])
        return ACCEPTED

    def add(self, price: float, quantity: float, taker_side: str | None) -> None:
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        self.close = price
        self.volume += quantity
        self.quote_volume += price * quantity
        self.trades += 1
        if taker_side == "buy":
            self.taker_buy_base += quantity
            self.taker_buy_quote += price * quantity
        elif taker_side is None:
            self.sides_known = False

    def to_bar(self, symbol: str) -> Bar:
        return Bar(
            symbol=symbol,
            open_time=self.open_time,
            open=self.open,
            high=self.high,
            low=self.low,
            close=self.close,
            volume=self.volume,
            quote_volume=self.quote_volume,
            trades=self.trades,
            taker_buy_base=self.taker_buy_base if self.sides_known else None,
            taker_buy_quote=self.taker_buy_quote if self.sides_known else None,
        )


@dataclass(slots=True)
class SymbolBars:
    """Everything one symbol's bar building needs; small, and serialisable for a changelog table."""

    symbol: str
    source: str | None = None
    last_trade_id: int | None = None  # the highest trade id taken, and its trade time: the plausibility of the next
    last_trade_time_ms: int = 0
    watermark_ms: int = 0
    last_closed_open_time: int | None = None
    open_bars: dict[int, OpenBar] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "source": self.source,
            "last_trade_id": self.last_trade_id,
            "last_trade_time_ms": self.last_trade_time_ms,
            "watermark_ms": self.watermark_ms,
            "last_closed_open_time": self.last_closed_open_time,
            "open_bars": [
                [
                    b.open_time,
                    b.open,
                    b.high,
                    b.low,
                    b.close,
                    b.volume,
                    b.quote_volume,
                    b.trades,
                    b.taker_buy_base,
                    b.taker_buy_quote,
                    b.sides_known,
                    b.ids,
                ]
                for b in self.open_bars.values()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SymbolBars:
        state = cls(
            symbol=data["symbol"],
            source=data["source"],
            last_trade_id=data.get("last_trade_id"),
            last_trade_time_ms=data.get("last_trade_time_ms", 0),
            watermark_ms=data["watermark_ms"],
            last_closed_open_time=data["last_closed_open_time"],
        )
        for row in data["open_bars"]:  # rows of earlier versions lack the ids
            state.open_bars[row[0]] = OpenBar(*row)
        return state


class BarBuilder:
    """Pure bar-building rules over a SymbolBars state; no I/O, no clock."""

    def __init__(self, allowed_lateness_ms: int = 3_000) -> None:
        self.allowed_lateness_ms = allowed_lateness_ms

    def on_trade(self, state: SymbolBars, trade: Trade) -> tuple[str, list[Bar]]:
        """Apply one trade; return what became of it and the bars it closed."""
        if state.source is None or state.source == "kline":
            state.source = trade.kind
        elif state.source != trade.kind:
            return IGNORED, []
        trade_id = trade.trade_id
        if trade_id is not None and state.last_trade_id is not None and trade_id > state.last_trade_id:
            elapsed_s = max(0, trade.trade_time_ms - state.last_trade_time_ms) / 1000
            if trade_id - state.last_trade_id > MAX_ID_JUMP + MAX_IDS_PER_S * elapsed_s:
                return IMPLAUSIBLE_ID, []
        minute = trade.trade_time_ms - trade.trade_time_ms % MINUTE_MS
        outcome = ACCEPTED
        if state.last_closed_open_time is not None and minute <= state.last_closed_open_time:
            outcome = LATE
        elif not trade.regular:
            outcome = IGNORED  # insurance-fund fills are not market prices
        else:
            bar = state.open_bars.get(minute)
            fresh = bar is None
            if bar is None:
                bar = OpenBar(minute, trade.price, trade.price, trade.price, trade.price)
            if trade_id is not None:
                outcome = bar.take_id(trade_id)
                if outcome != ACCEPTED:
                    return outcome, []
                if state.last_trade_id is None or trade_id > state.last_trade_id:
                    state.last_trade_id, state.last_trade_time_ms = trade_id, trade.trade_time_ms
            if fresh:
                state.open_bars[minute] = bar
            bar.add(trade.price, trade.quantity, trade.taker_side)
        if trade.event_time_ms > state.watermark_ms:
            state.watermark_ms = trade.event_time_ms
        return outcome, self.close_due(state)

    def on_kline(self, state: SymbolBars, kline: Kline) -> tuple[str, list[Bar]]:
        """A closed kline is a finished bar unless trades are building bars; an unfinished one is ignored."""
        if not kline.closed or state.open_bars:
            return IGNORED, []
        if state.source is None:
            state.source = "kline"
        if state.last_closed_open_time is not None and kline.open_time <= state.last_closed_open_time:
            return DUPLICATE, []
        state.last_closed_open_time = kline.open_time
        state.watermark_ms = max(state.watermark_ms, kline.close_time)
        return ACCEPTED, [
            Bar(
                symbol=state.symbol,
                open_time=kline.open_time,
                open=kline.open,
                high=kline.high,
                low=kline.low,
                close=kline.close,
                volume=kline.volume,
                quote_volume=kline.quote_volume,
                trades=kline.trades,
                taker_buy_base=kline.taker_buy_base,
                taker_buy_quote=kline.taker_buy_quote,
            )
        ]

    def close_due(self, state: SymbolBars, now_ms: int | None = None) -> list[Bar]:
        """Close every open bar whose minute ended more than the allowed lateness before the watermark.

        `now_ms` (a wall clock, passed in) closes bars of a symbol whose feed went quiet.
        """
        if not state.open_bars:
            return []
        horizon = state.watermark_ms if now_ms is None else max(state.watermark_ms, now_ms)
        cutoff = horizon - self.allowed_lateness_ms
        due = sorted(t for t in state.open_bars if t + MINUTE_MS <= cutoff)
        closed = []
        for open_time in due:
            closed.append(state.open_bars.pop(open_time).to_bar(state.symbol))
            state.last_closed_open_time = open_time
        return closed

    def close_all(self, state: SymbolBars) -> list[Bar]:
        """Close every open bar (the feed ended)."""
        closed = [state.open_bars.pop(t).to_bar(state.symbol) for t in sorted(state.open_bars)]
        if closed:
            state.last_closed_open_time = closed[-1].open_time
        return closed
