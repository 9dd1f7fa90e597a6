"""Ingest: validate market events, route bad ones to the dead-letter topic, build 1-minute bars.

The loop that reads and writes Kafka is `streams.ingest.service`; the rules live in `streams.ingest.events` (parsing)
and `streams.ingest.bars` (bars).
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models.bars import Bar
from streams import metrics
from streams.ingest.bars import ACCEPTED, REFUSED, BarBuilder, SymbolBars
from streams.ingest.events import (
    BadEvent,
    BookTicker,
    DepthSnapshot,
    DepthUpdate,
    Kline,
    MarkPrice,
    Trade,
    event_kind,
    parse_event,
)
from streams.serialization import dumps

CONTROL_HEADER = "mlrisk-control"  # marked messages of earlier versions (quiet-symbol flushes): skipped
# A dead letter stays far below the producer's 1 MiB request limit whatever it reports: a record above it is
# refused, and a message that cannot be parked would be read again and again.
DLQ_MAX_ERROR_CHARS = 256
DLQ_MAX_RAW_BYTES = 65_536  # of the original; its length and sha256 describe the whole
DLQ_MAX_KEY_BYTES = 64
SYMBOL_IDLE_EVICT_MS = 15 * 60_000  # a symbol quiet this long (wall clock) may make room for a new one


def dead_letter(
    error: BadEvent | str,
    topic: str,
    partition: int,
    offset: int,
    raw: bytes | None,
    received_at_ms: int,
    keep_raw: bool = True,
) -> bytes:
    """The DLQ message of the contract: the reason, where the message came from, and its original bytes, bounded
    (`keep_raw=False`: the description of the bytes without them, for when even the bounded record was refused)."""
    raw = raw or b""
    kept = raw[:DLQ_MAX_RAW_BYTES] if keep_raw else b""
    return dumps(
        {
            "error": str(error)[:DLQ_MAX_ERROR_CHARS],
            "reason": error.code if isinstance(error, BadEvent) else "error",
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "received_at": received_at_ms,
            "raw": base64.b64encode(kept).decode("ascii"),
            "raw_truncated": len(kept) < len(raw),
            "raw_length": len(raw),
            "raw_sha256": hashlib.sha256(raw).hexdigest(),
        }
    )


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The key a dead letter goes out under: the original's, bounded."""
    return None if key is None else key[:DLQ_MAX_KEY_BYTES]


@dataclass(slots=True)
class MarketView:
    """What the rest of the worker knows of a symbol's market besides bars: best bid/ask, mark price."""

    bid_price: float | None = None
    ask_price: float | None = None
    bid_qty: float | None = None
    ask_qty: float | None = None
    mark_price: float | None = None
    funding_rate: float | None = None
    book: Any = None  # streams.ingest.book.OrderBook once depth arrives
    last_event_wall_ms: int = 0

    def snapshot(self) -> dict[str, Any]:
        """What the risk decision uses of the market beside the bar: mark price, spread, depth and imbalance
        from the order book where one is kept, else the spread of the best bid and ask. It travels with the bar,
        so the signal stage needs no view of its own (and may run on another worker)."""
        market: dict[str, Any] = {}
        if self.mark_price is not None:
            market["mark_price"] = self.mark_price
        analysis = self.book.analysis() if self.book is not None else None
        if analysis is not None:
            market.update(
                spread_bps=analysis["spread_bps"],
                depth_usdt=analysis["depth_usdt"],
                book_imbalance=analysis["book_imbalance"],
            )
        elif self.bid_price and self.ask_price and self.ask_price > self.bid_price:
            mid = (self.bid_price + self.ask_price) / 2
            market["spread_bps"] = (self.ask_price - self.bid_price) / mid * 1e4
        return market


@dataclass(slots=True)
class IngestResult:
    """What one message produced: closed bars to publish, or a DLQ payload, or a re-keyed message."""

    bars: list[Bar] = field(default_factory=list)
    dead_letter: bytes | None = None
    rekey_symbol: str | None = None
    state_changed: bool = False


class Ingest:
    """Per-message ingest logic over a bar-state mapping (symbol → `SymbolBars.to_dict()`)."""

    def __init__(
        self,
        builder: BarBuilder,
        bar_states: Any,
        max_future_ms: int,
        book_factory: Callable[[str], Any] | None = None,
        symbols: tuple[str, ...] = (),
        max_symbols: int = 300,
    ) -> None:
        self.builder = builder
        self.bar_states = bar_states
        self.max_future_ms = max_future_ms
        self.views: dict[str, MarketView] = {}
        self.book_factory = book_factory
        self.allowed = frozenset(symbols)  # empty: any symbol, up to `max_symbols` at a time
        self.max_symbols = max_symbols
        # states touched in the current batch: read from the table once, written back once (see `take_dirty`)
        self.working: dict[str, SymbolBars] = {}
        self.evicted: list[str] = []  # symbols forgotten to make room, for the loop to forget too (`take_evicted`)

    def state_for(self, symbol: str) -> SymbolBars:
        state = self.working.get(symbol)
        if state is None:
            data = self.bar_states.get(symbol)
            state = self.working[symbol] = SymbolBars(symbol) if data is None else SymbolBars.from_dict(data)
        return state

    def has_open_bars(self, symbol: str) -> bool:
        """Whether a symbol has bars in the making (read-only: the batch cache is left alone)."""
        state = self.working.get(symbol)
        if state is not None:
            return bool(state.open_bars)
        data = self.bar_states.get(symbol)
        return bool(data and data["open_bars"])

    def take_dirty(self) -> dict[str, SymbolBars]:
        """The states changed since the last call, to be written to the table; the batch cache is cleared."""
        dirty, self.working = self.working, {}
        return dirty

    def take_evicted(self) -> list[str]:
        """The symbols evicted since the last call."""
        evicted, self.evicted = self.evicted, []
        return evicted

    def admit(self, symbol: str, now_ms: int) -> None:
        """Raise BadEvent unless `symbol` may have state here: on the allow-list when there is one, else already
        known, or one of at most `max_symbols`, making room by evicting the longest-quiet symbol without open bars
        when it has been quiet for `SYMBOL_IDLE_EVICT_MS`. Every symbol costs state, metrics and changelog."""
        if self.allowed:
            if symbol not in self.allowed:
                raise BadEvent("symbol_not_allowed", f"{symbol} is not in MLRISK_SYMBOLS")
            return  # the allow-list is the bound
        if symbol in self.views or symbol in self.working or symbol in self.bar_states:
            return
        known = self.views.keys() | self.bar_states.keys()
        if len(known) < self.max_symbols:
            return
        idle = [
            (view.last_event_wall_ms, name)
            for name, view in self.views.items()
            if now_ms - view.last_event_wall_ms >= SYMBOL_IDLE_EVICT_MS
            and name not in self.working
            and not self.has_open_bars(name)
        ]
        idle += [
            (0, name)
            for name in self.bar_states.keys() - self.views.keys()
            if name not in self.working and not self.has_open_bars(name)
        ]  # restored, not seen since
        if not idle:
            raise BadEvent(
                "too_many_symbols",
                f"{symbol} would be symbol {len(known) + 1} of at most "
                f"{self.max_symbols} (MLRISK_MAX_SYMBOLS), none quiet enough to evict",
            )
        self.evict(min(idle)[1])

    def evict(self, symbol: str) -> None:
        """Forget a symbol's market view, bar state and metric series."""
        self.views.pop(symbol, None)
        self.bar_states.pop(symbol, None)
        self.working.pop(symbol, None)
        metrics.forget_symbol(symbol)
        self.evicted.append(symbol)

    def handle(
        self, raw: bytes, key: bytes | None, topic: str, partition: int, offset: int, now_ms: int
    ) -> IngestResult:
        try:
            event = parse_event(raw, now_ms, self.max_future_ms)
            symbol = event.symbol
            if self.allowed and symbol not in self.allowed:
                raise BadEvent("symbol_not_allowed", f"{symbol} is not in MLRISK_SYMBOLS")
            if key != symbol.encode():
                # keyed wrongly (or not at all): send it on under its symbol so one symbol stays on one partition
                return IngestResult(rekey_symbol=symbol)
            self.admit(symbol, now_ms)  # on the worker that owns the symbol's partition
        except BadEvent as error:
            metrics.EVENTS_REJECTED.labels(error.code).inc()
            return IngestResult(dead_letter=dead_letter(error, topic, partition, offset, raw, now_ms))
        metrics.EVENTS_IN.labels(event_kind(event), symbol).inc()
        view = self.views.get(symbol)
        if view is None:
            view = self.views[symbol] = MarketView()
        view.last_event_wall_ms = now_ms
        if isinstance(event, Trade):
            outcome, bars = self._apply(symbol, lambda s: self.builder.on_trade(s, event))
            if outcome in REFUSED:
                metrics.EVENTS_REJECTED.labels(outcome).inc()
                refusal = BadEvent(outcome, f"trade id {event.trade_id} does not fit the ids seen for {symbol}")
                return IngestResult(dead_letter=dead_letter(refusal, topic, partition, offset, raw, now_ms))
            return self._bars(symbol, outcome, bars)
        if isinstance(event, Kline):
            return self._bars(symbol, *self._apply(symbol, lambda s: self.builder.on_kline(s, event)))
        if isinstance(event, BookTicker):
            view.bid_price, view.bid_qty = event.bid_price, event.bid_qty
            view.ask_price, view.ask_qty = event.ask_price, event.ask_qty
        elif isinstance(event, MarkPrice):
            view.mark_price, view.funding_rate = event.mark_price, event.funding_rate
        elif isinstance(event, (DepthUpdate, DepthSnapshot)) and self.book_factory is not None:
            if view.book is None:
                view.book = self.book_factory(symbol)
            view.book.apply(event)
        return IngestResult()

    def _apply(self, symbol: str, step: Callable[[SymbolBars], tuple[str, list[Bar]]]) -> tuple[str, list[Bar]]:
        outcome, bars = step(self.state_for(symbol))
        if outcome != ACCEPTED and outcome not in REFUSED:
            metrics.EVENTS_DROPPED.labels(outcome, symbol).inc()
        return outcome, bars

    def _bars(self, symbol: str, outcome: str, bars: list[Bar]) -> IngestResult:
        if bars:
            metrics.BARS_CLOSED.labels(symbol).inc(len(bars))
        return IngestResult(bars=bars, state_changed=True)

    def flush(self, symbol: str, now_ms: int) -> list[Bar]:
        """Close the bars of a symbol whose feed went quiet (`now_ms` is the wall clock)."""
        bars = self.builder.close_due(self.state_for(symbol), now_ms)
        if bars:
            metrics.BARS_CLOSED.labels(symbol).inc(len(bars))
        return bars


def wall_ms() -> int:
    return int(time.time() * 1000)
