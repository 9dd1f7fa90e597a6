"""A paper book is written to its table only when a restart would otherwise restore something else.

The worker writes a symbol's engine state on every bar, but its paper book only when it changed: a flat book
with nothing pending moves only its last price, which nothing reads while flat. Driven by the engine's own
signals on real days, every bar's restored book (the last written value, through JSON as a changelog restore
reads it) must equal the live one, last price aside while flat, exactly while a position is open or an order
waits.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from models.bars import parse_iso_ms
from models.data import load_bars
from models.engine import SignalEngine
from models.registry import load_bundle
from risk.config import RiskConfig
from streams.execution import FillCosts, PaperAccount, PaperBook, PaperBroker

ACTIONABLE = ("long", "short", "close")


def _restorable(book: PaperBook) -> dict:
    return {key: value for key, value in book.to_dict().items() if key != "last_price"}


def test_skipped_writes_restore_the_book_on_every_bar(quick_models: Path, klines_dir: Path) -> None:
    config = RiskConfig(taker_fee_rate=0.0001, min_edge_to_cost=0.2)  # costs low enough that the quick models trade
    engine = SignalEngine(load_bundle(quick_models), config)
    broker = PaperBroker(PaperAccount(config.equity_usdt, config.limits), FillCosts(config.taker_fee_rate, 0.0))
    start = parse_iso_ms("2024-06-03")
    bars = list(load_bars(klines_dir, "BTCUSDT", start, start + 3 * 86_400_000).bars())
    state = engine.new_state("BTCUSDT")
    stored: bytes | None = None  # the table's value, as the changelog carries it
    fills, quiet_bars, was_flat = 0, 0, False
    for bar in bars:
        logs = broker.on_bar(bar)
        signal = engine.on_bar(state, bar)
        if signal is not None and signal["signal_type"] in ACTIONABLE:
            logs += broker.on_signal(signal)
        fills += len(logs)
        live = broker.book("BTCUSDT")
        flat = live.book.position is None and live.pending is None
        wrote = not live.unchanged_since(None if stored is None else orjson.loads(stored))
        if wrote:
            stored = orjson.dumps(live.to_dict())
        if flat and was_flat and not logs and stored is not None:  # nothing happened to a flat book: no write
            assert not wrote, bar.open_time
            quiet_bars += 1
        was_flat = flat
        assert stored is not None
        restored = PaperBook.from_dict(orjson.loads(stored))
        if live.book.position is None and live.pending is None:
            assert _restorable(restored) == _restorable(live), bar.open_time
        else:
            assert restored.to_dict() == live.to_dict(), bar.open_time

    assert fills >= 4  # the days traded: fills opened positions and exits or closes ended them
    assert quiet_bars > 100


def test_a_book_is_written_whenever_its_stored_value_is_not_a_flat_copy() -> None:
    book = PaperBook(last_price=100.0)
    flat = book.to_dict()
    assert book.unchanged_since(flat)
    assert book.unchanged_since({**flat, "last_price": 99.0})  # only the price moved: no write
    assert not book.unchanged_since(None)  # never written
    assert not book.unchanged_since([flat])  # not what a book is written as
    assert not book.unchanged_since({**flat, "open_signal_id": "an earlier trade"})
    assert not book.unchanged_since({**flat, "pending": {"signal_type": "long"}})  # an order was waiting then
    # written with a position that a stop or a target has closed since: the totals differ
    assert not book.unchanged_since({**flat, "book": {**flat["book"], "realised_pnl_usdt": 12.5}})
    book.pending = {"signal_type": "long"}
    assert not book.unchanged_since(flat)  # an order waits now
