"""Hostile market data: each message is parked in the DLQ, bounded, with its reason, and the genuine trades of the
same symbol after it still make exactly the bars they make alone (which equal Binance's klines: see the unit and
integration bar tests).

Without these fixes: a message whose dead letter outgrows the producer's 1 MiB limit crash-looped the worker; one
trade id far ahead or one time far ahead (or a kline from another year) marked every later genuine trade of the
symbol a duplicate or late, for good, because the state survives restarts; nanosecond times and non-ASCII digits
raised outside the parser's error path; any Unicode name became a symbol with its own state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from streams.ingest import book as order_book
from streams.ingest.book import OrderBook
from streams.ingest.events import DepthSnapshot, DepthUpdate
from tests.adversarial.conftest import (
    INJECT_AT,
    SYMBOL,
    assert_bounded_dead_letter,
    feed,
    make_ingest,
    with_hostile,
)

YEAR_2100_MS = 4_102_444_800_000
YEAR_2005_MS = 1_104_537_600_000
YEAR_2015_MS = 1_420_070_400_000


@dataclass(frozen=True)
class Context:
    now_ms: int  # the receiver's clock at the injection
    last_id: int  # the last genuine trade id before it
    minute_ms: int  # the minute in the making


def _trade(ctx: Context, **changes: Any) -> bytes:
    body = {
        "e": "trade",
        "E": ctx.now_ms - 40,
        "T": ctx.now_ms - 42,
        "s": SYMBOL,
        "t": ctx.last_id + 1,
        "p": "61000.5",
        "q": "0.01",
        "X": "MARKET",
        "m": True,
        **changes,
    }
    return orjson.dumps({"stream": "btcusdt@trade", "data": {k: v for k, v in body.items() if v is not ...}})


def _raw_trade(ctx: Context, field: str, literal: str) -> bytes:
    """A trade whose `field` is the JSON text `literal`, as written (NaN, huge integers, ...)."""
    marker = "__HOSTILE__"
    return _trade(ctx, **{field: marker}).replace(f'"{marker}"'.encode(), literal.encode())


def _kline(ctx: Context, t: int | None = None, big_t: int | None = None, e: int | None = None) -> bytes:
    open_time = ctx.minute_ms - 60_000 if t is None else t
    close_time = open_time + 59_999 if big_t is None else big_t
    k = {
        "t": open_time,
        "T": close_time,
        "s": SYMBOL,
        "i": "1m",
        "o": "61000",
        "c": "61001",
        "h": "61002",
        "l": "60999",
        "v": "3.5",
        "n": 100,
        "x": True,
        "q": "213500",
        "V": "1.5",
        "Q": "91500",
    }
    return orjson.dumps({"e": "kline", "E": close_time + 1 if e is None else e, "s": SYMBOL, "k": k})


def _tick(ctx: Context, **changes: Any) -> bytes:
    return orjson.dumps({"symbol": SYMBOL, "ts": ctx.now_ms, "price": 61000.5, "qty": 0.3, **changes})


def _mark(ctx: Context, **changes: Any) -> bytes:
    return orjson.dumps(
        {
            "e": "markPriceUpdate",
            "E": ctx.now_ms,
            "s": SYMBOL,
            "p": "61000",
            "i": "61001",
            "r": "0.0001",
            "T": ctx.now_ms + 3_600_000,
            **changes,
        }
    )


def _depth(ctx: Context, levels: int = 2, **changes: Any) -> bytes:
    return orjson.dumps(
        {
            "e": "depthUpdate",
            "E": ctx.now_ms,
            "s": SYMBOL,
            "U": 1,
            "u": 2,
            "pu": 0,
            "b": [[60000 - i, 1] for i in range(levels)],
            "a": [["61000", "1"]],
            **changes,
        }
    )


def _book_ticker(ctx: Context, **changes: Any) -> bytes:
    return orjson.dumps(
        {
            "e": "bookTicker",
            "E": ctx.now_ms,
            "s": SYMBOL,
            "u": 5,
            "b": "60999",
            "B": "1",
            "a": "61000",
            "A": "2",
            **changes,
        }
    )


def _nested(depth: int) -> bytes:
    return b'{"e":"trade","s":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"


Hostile = Callable[[Context], bytes]
DROPPED = None  # accepted by the parser and dropped by the bar rules (late, duplicate): counted, no dead letter

CASES: list[tuple[str, str, Hostile, str | None]] = [
    # class, id, message, expected reason
    ("oversized", "460KB-not-json", lambda c: b"x" * 460_000, "not_json"),
    ("oversized", "800KB-zero-bytes", lambda c: b"\x00" * 800_000, "not_json"),
    ("oversized", "1.2MB-valid-json", lambda c: _trade(c, pad="y" * 1_200_000), "too_large"),
    ("oversized", "900KB-valid-trade-field", lambda c: _trade(c, X="M" * 900_000), DROPPED),
    ("oversized", "long-price-string", lambda c: _trade(c, p="1" + "0" * 5_000), "bad_type"),
    ("binary", "random-bytes", lambda c: bytes((i * 131 + 7) % 256 for i in range(4_096)), "not_json"),
    ("binary", "invalid-utf8-in-symbol", lambda c: _trade(c).replace(b'"BTCUSDT"', b'"BTC\xff\xfeUSDT"'), "not_json"),
    ("binary", "utf16-json", lambda c: _trade(c).decode().encode("utf-16"), "not_json"),
    ("binary", "nul-in-symbol", lambda c: _trade(c, s="BTC\x00USDT"), "bad_symbol"),
    ("binary", "empty", lambda c: b"", "not_json"),
    ("nesting", "100k-arrays", lambda c: b"[" * 100_000 + b"]" * 100_000, "not_json"),
    ("nesting", "2k-objects-in-symbol", lambda c: _nested(2_000), "not_json"),
    (
        "nesting",
        "wrapped-twice",
        lambda c: orjson.dumps({"stream": "x", "data": {"stream": "y", "data": orjson.loads(_trade(c))}}),
        "unknown_event",
    ),
    ("nesting", "data-not-object", lambda c: b'{"stream":"btcusdt@trade","data":"x"}', "not_object"),
    ("huge-numbers", "price-1e308", lambda c: _trade(c, p=1e308), "out_of_range"),
    ("huge-numbers", "price-string-1e400", lambda c: _trade(c, p="1e400"), "non_finite"),
    ("huge-numbers", "price-1e9", lambda c: _trade(c, p="1000000000"), "out_of_range"),
    ("huge-numbers", "quantity-1e300", lambda c: _trade(c, q="1e300"), "out_of_range"),
    ("huge-numbers", "id-2**64-literal", lambda c: _raw_trade(c, "t", str(2**64)), "bad_type"),
    ("huge-numbers", "id-2**63", lambda c: _trade(c, t=2**63), "bad_type"),
    ("huge-numbers", "id-5000-digit-string", lambda c: _trade(c, t="9" * 5_000), "bad_type"),
    ("huge-numbers", "time-1e300", lambda c: _trade(c, E=1e300), "bad_timestamp"),
    ("non-finite", "NaN-literal", lambda c: _raw_trade(c, "p", "NaN"), "not_json"),
    ("non-finite", "Infinity-literal", lambda c: _raw_trade(c, "q", "Infinity"), "not_json"),
    ("non-finite", "price-string-nan", lambda c: _trade(c, p="nan"), "non_finite"),
    ("non-finite", "quantity-string--inf", lambda c: _trade(c, q="-inf"), "non_finite"),
    (
        "far-future",
        "E-59-minutes-ahead",
        lambda c: _trade(c, E=c.now_ms + 59 * 60_000, T=c.now_ms + 59 * 60_000),
        "future_timestamp",
    ),
    (
        "far-future",
        "E-and-T-10s-ahead",
        lambda c: _trade(c, E=c.now_ms + 10_000, T=c.now_ms + 10_000),
        "future_timestamp",
    ),
    ("far-future", "T-in-2100", lambda c: _trade(c, T=YEAR_2100_MS), "inconsistent_times"),
    ("far-future", "E-and-T-in-2100", lambda c: _trade(c, E=YEAR_2100_MS, T=YEAR_2100_MS), "future_timestamp"),
    ("far-future", "kline-t-in-2100-current-E", lambda c: _kline(c, t=YEAR_2100_MS, e=c.now_ms), "inconsistent_times"),
    ("far-future", "kline-t-and-E-in-2100", lambda c: _kline(c, t=YEAR_2100_MS), "future_timestamp"),
    ("far-future", "kline-T-in-2100", lambda c: _kline(c, big_t=YEAR_2100_MS), "inconsistent_times"),
    ("far-future", "tick-ts-in-2100", lambda c: _tick(c, ts=YEAR_2100_MS), "future_timestamp"),
    ("far-future", "mark-E-in-2100", lambda c: _mark(c, E=YEAR_2100_MS, T=YEAR_2100_MS), "future_timestamp"),
    ("far-future", "mark-funding-T-in-2100", lambda c: _mark(c, T=YEAR_2100_MS), "inconsistent_times"),
    ("far-future", "depth-E-in-2100", lambda c: _depth(c, E=YEAR_2100_MS), "future_timestamp"),
    ("far-future", "book-ticker-E-in-2100", lambda c: _book_ticker(c, E=YEAR_2100_MS), "future_timestamp"),
    ("far-past", "E-in-2005", lambda c: _trade(c, E=YEAR_2005_MS, T=YEAR_2005_MS), "bad_timestamp"),
    ("far-past", "T-zero", lambda c: _trade(c, T=0), "bad_timestamp"),
    ("far-past", "E-negative", lambda c: _trade(c, E=-1), "bad_timestamp"),
    ("far-past", "T-in-2015-current-E", lambda c: _trade(c, T=YEAR_2015_MS), "inconsistent_times"),
    ("far-past", "trade-in-2015", lambda c: _trade(c, E=YEAR_2015_MS, T=YEAR_2015_MS), DROPPED),
    ("far-past", "kline-in-2005", lambda c: _kline(c, t=YEAR_2005_MS - YEAR_2005_MS % 60_000), "bad_timestamp"),
    ("far-past", "tick-ts-in-seconds", lambda c: _tick(c, ts=1_700_000), "bad_timestamp"),
    ("far-past", "mark-E-in-2005", lambda c: _mark(c, E=YEAR_2005_MS), "bad_timestamp"),
    ("nanoseconds", "E-and-T", lambda c: _trade(c, E=c.now_ms * 10**6, T=c.now_ms * 10**6), "bad_timestamp"),
    (
        "nanoseconds",
        "kline-t-and-T",
        lambda c: _kline(c, t=(c.minute_ms - 60_000) * 10**6, big_t=(c.minute_ms - 1) * 10**6),
        "bad_timestamp",
    ),
    ("nanoseconds", "tick-ts", lambda c: _tick(c, ts=c.now_ms * 10**6), "bad_timestamp"),
    ("nanoseconds", "depth-E", lambda c: _depth(c, E=c.now_ms * 10**6), "bad_timestamp"),
    ("inconsistent-times", "kline-T-not-t+59999", lambda c: _kline(c, big_t=c.minute_ms - 2), "inconsistent_times"),
    (
        "inconsistent-times",
        "kline-two-minutes-long",
        lambda c: _kline(c, big_t=c.minute_ms + 59_999),
        "inconsistent_times",
    ),
    (
        "inconsistent-times",
        "kline-E-before-its-minute",
        lambda c: _kline(c, e=c.minute_ms - 120_000),
        "inconsistent_times",
    ),
    (
        "inconsistent-times",
        "trade-T-2-minutes-before-E",
        lambda c: _trade(c, T=c.now_ms - 120_000),
        "inconsistent_times",
    ),
    ("id-jump", "id-2**62", lambda c: _trade(c, t=2**62), "implausible_trade_id"),
    ("id-jump", "id-plus-1e9", lambda c: _trade(c, t=c.last_id + 10**9), "implausible_trade_id"),
    ("id-jump", "id-plus-60000-same-ms", lambda c: _trade(c, t=c.last_id + 60_000), "implausible_trade_id"),
    ("id-jump", "id-repeated", lambda c: _trade(c, t=c.last_id), DROPPED),
    ("look-alike", "fullwidth", lambda c: _trade(c, s="ＢＴＣＵＳＤＴ"), "bad_symbol"),
    ("look-alike", "cyrillic-B-T-C", lambda c: _trade(c, s="ВТСUSDT"), "bad_symbol"),
    ("look-alike", "zero-width-space", lambda c: _trade(c, s="BTCUSDT\u200b"), "bad_symbol"),
    ("look-alike", "sharp-s-uppercases-to-SS", lambda c: _trade(c, s="BTCUSDß"), "bad_symbol"),
    ("look-alike", "inner-newline", lambda c: _trade(c, s="BTC\nUSDT"), "bad_symbol"),
    ("look-alike", "dotted-capital-I", lambda c: _trade(c, s="BTCUSDT\u0130"), "bad_symbol"),
    ("overlong-symbol", "21-characters", lambda c: _trade(c, s="B" * 21), "bad_symbol"),
    ("overlong-symbol", "100k-characters", lambda c: _trade(c, s="B" * 100_000), "bad_symbol"),
    ("overlong-symbol", "one-character", lambda c: _trade(c, s="B"), "bad_symbol"),
    ("non-ascii-digits", "superscript-two-id", lambda c: _trade(c, t="²"), "bad_type"),
    ("non-ascii-digits", "arabic-indic-price", lambda c: _trade(c, p="٦١٠٠٠"), "bad_type"),
    ("non-ascii-digits", "fullwidth-quantity", lambda c: _trade(c, q="１"), "bad_type"),
    ("wrong-types", "price-list", lambda c: _trade(c, p=[1]), "bad_type"),
    ("wrong-types", "price-object", lambda c: _trade(c, p={"v": 1}), "bad_type"),
    ("wrong-types", "price-null", lambda c: _trade(c, p=None), "bad_type"),
    ("wrong-types", "symbol-list", lambda c: _trade(c, s=[SYMBOL]), "bad_symbol"),
    ("wrong-types", "maker-null", lambda c: _trade(c, m=None), "bad_type"),
    (
        "wrong-types",
        "kline-k-list",
        lambda c: orjson.dumps({"e": "kline", "E": c.now_ms, "s": SYMBOL, "k": []}),
        "bad_type",
    ),
    ("depth", "100k-levels", lambda c: _depth(c, levels=100_000), "too_many_levels"),
    (
        "depth",
        "10k-levels-in-a-snapshot",
        lambda c: orjson.dumps(
            {"e": "depthSnapshot", "s": SYMBOL, "lastUpdateId": 1, "bids": [[1, 1]] * 10_000, "asks": []}
        ),
        "too_many_levels",
    ),
    ("depth", "levels-not-pairs", lambda c: _depth(c, b=[["1"]]), "bad_type"),
    ("depth", "level-price-NaN-string", lambda c: _depth(c, b=[["NaN", "1"]]), "non_finite"),
]


@pytest.mark.parametrize(("kind", "case", "hostile", "reason"), CASES, ids=[f"{k}:{c}" for k, c, _, _ in CASES])
def test_hostile_message_is_parked_and_later_bars_are_unchanged(
    genuine: list[tuple[bytes, int]], clean_bars: list[Any], kind: str, case: str, hostile: Hostile, reason: str | None
) -> None:
    """Without the fix this message crashed ingest, outgrew the DLQ, or shifted the symbol's bars for good."""
    last = orjson.loads(genuine[INJECT_AT - 1][0])["data"]
    now = genuine[INJECT_AT - 1][1] + 50
    message = hostile(Context(now, last["t"], last["T"] - last["T"] % 60_000))
    run = feed(with_hostile(genuine, [message]))
    assert run.bars == clean_bars
    if reason is DROPPED:
        assert run.dead_letters == []
        return
    assert [d["reason"] for d in run.dead_letters] == [reason]
    assert_bounded_dead_letter(run.dead_letters[0], run.raw_dead_letters[0], message)


def test_hostile_cases_cover_fifteen_classes_and_sixty_inputs() -> None:
    """The suite's own reach, as the hostile-input requirement counts it (this file alone)."""
    assert len({kind for kind, _, _, _ in CASES}) >= 15
    assert len(CASES) >= 60


def test_a_barrage_of_every_hostile_message_at_once_leaves_the_bars_unchanged(
    genuine: list[tuple[bytes, int]], clean_bars: list[Any]
) -> None:
    """All of them, back to back, mid-stream: one symbol's state must survive the lot (none poisons the next)."""
    last = orjson.loads(genuine[INJECT_AT - 1][0])["data"]
    context = Context(genuine[INJECT_AT - 1][1] + 50, last["t"], last["T"] - last["T"] % 60_000)
    messages = [hostile(context) for _, _, hostile, _ in CASES]
    run = feed(with_hostile(genuine, messages))
    assert run.bars == clean_bars
    assert len(run.dead_letters) == sum(reason is not DROPPED for _, _, _, reason in CASES)


def test_a_modest_forged_id_jump_does_not_make_later_genuine_trades_duplicates(
    genuine: list[tuple[bytes, int]], clean_bars: list[Any]
) -> None:
    """A trade 1,000 ids ahead is plausible and taken, but the genuine trades whose ids it skipped still count:
    with a high-water mark they were all dropped as duplicates until the stream caught up."""
    last = orjson.loads(genuine[INJECT_AT - 1][0])["data"]
    forged = _trade(
        Context(genuine[INJECT_AT - 1][1] + 50, last["t"], 0), t=last["t"] + 1_000, q="0.5", T=last["T"], E=last["E"]
    )
    run = feed(with_hostile(genuine, [forged]))
    assert run.dead_letters == []
    changed = [(a, b) for a, b in zip(clean_bars, run.bars, strict=True) if a != b]
    assert len(changed) == 1
    clean, hostile = changed[0]
    assert hostile.trades == clean.trades + 1
    assert hostile.volume == pytest.approx(clean.volume + 0.5, rel=1e-12)


def test_a_kline_from_2100_does_not_move_a_kline_symbol_past_the_genuine_klines() -> None:
    """The watermark of a kline-fed symbol: a kline dated 2100 with a current event time was accepted and every
    genuine kline after it was dropped as not newer; the signal stage then read the next bars as redeliveries."""
    minute = 1_722_470_400_000  # 2024-08-01 00:00
    ctx = Context(minute + 10 * 60_000, 0, minute)
    genuine = [_kline(ctx, t=minute + i * 60_000) for i in range(6)]
    hostile = _kline(ctx, t=YEAR_2100_MS, e=minute + 3 * 60_000)
    now = minute + 10 * 60_000
    items = [(raw, SYMBOL.encode(), now) for raw in genuine[:3] + [hostile] + genuine[3:]]
    run = feed(items)
    assert [b.open_time for b in run.bars] == [minute + i * 60_000 for i in range(6)]
    assert [d["reason"] for d in run.dead_letters] == ["inconsistent_times"]


def test_an_800kB_message_makes_a_dead_letter_the_producer_accepts() -> None:
    """The record that crash-looped the worker: 800,000 B of non-JSON made a 1,066,969 B dead letter, above
    aiokafka's 1 MiB request limit; the send raised, ingest stopped, and the restart read it again."""
    message = b"\x01" * 800_000
    run = feed([(message, SYMBOL.encode(), 1_722_470_400_000)])
    assert run.dead_letters[0]["raw_truncated"] is True
    assert_bounded_dead_letter(run.dead_letters[0], run.raw_dead_letters[0], message)


def test_unknown_symbols_beyond_the_cap_are_refused_and_the_known_one_is_untouched(
    genuine: list[tuple[bytes, int]], clean_bars: list[Any]
) -> None:
    """20,000 one-tick junk symbols cost state, changelog and metric series each: the cap holds them at
    MLRISK_MAX_SYMBOLS and BTCUSDT, known before the flood, keeps its bars."""
    last = orjson.loads(genuine[INJECT_AT - 1][0])["data"]
    ctx = Context(genuine[INJECT_AT - 1][1] + 50, last["t"], 0)
    junk = [(_tick(ctx, symbol=f"J{i:07d}"), f"J{i:07d}".encode()) for i in range(20_000)]
    items = with_hostile(genuine, [])
    now = ctx.now_ms
    items[INJECT_AT:INJECT_AT] = [(raw, key, now) for raw, key in junk]
    run = feed(items, make_ingest(max_symbols=50))
    assert run.bars == clean_bars
    assert len(run.ingest.views) == 50  # BTCUSDT and 49 junk symbols
    assert len(run.dead_letters) == 20_000 - 49
    assert {d["reason"] for d in run.dead_letters} == {"too_many_symbols"}


def test_quiet_symbols_make_room_for_new_ones_and_lose_their_metric_series() -> None:
    """With the cap full, a symbol quiet for 15 minutes is evicted for a newcomer instead of refusing it."""
    from streams import metrics

    ingest = make_ingest(max_symbols=3)
    start = 1_722_470_400_000
    for i, name in enumerate(("AAAUSDT", "BBBUSDT", "CCCUSDT")):
        ctx = Context(start + i, 0, 0)
        assert ingest.handle(_tick(ctx, symbol=name), name.encode(), "md", 0, i, start + i).dead_letter is None
    for name in ("AAAUSDT", "BBBUSDT", "CCCUSDT"):  # their open minutes close once they are quiet
        ingest.flush(name, start + 20 * 60_000)
    for name, state in ingest.take_dirty().items():  # the end of a batch, as the ingest loop does
        ingest.bar_states[name] = state.to_dict()
    later = start + 20 * 60_000
    refused = ingest.handle(_tick(Context(later, 0, 0), symbol="DDDUSDT"), b"DDDUSDT", "md", 0, 9, later)
    assert refused.dead_letter is None
    assert "AAAUSDT" not in ingest.views and "DDDUSDT" in ingest.views
    assert ingest.take_evicted() == ["AAAUSDT"]
    exposed = metrics.render().decode()
    assert 'symbol="AAAUSDT"' not in exposed and 'symbol="DDDUSDT"' in exposed


def test_the_allow_list_refuses_every_other_symbol(genuine: list[tuple[bytes, int]], clean_bars: list[Any]) -> None:
    """MLRISK_SYMBOLS was parsed and never used: any name became a symbol with state."""
    last = orjson.loads(genuine[INJECT_AT - 1][0])["data"]
    ctx = Context(genuine[INJECT_AT - 1][1] + 50, last["t"], 0)
    junk = [_tick(ctx, symbol=name) for name in ("ETHUSDT", "BTC/USD", "XRPUSDT")]
    run = feed(with_hostile(genuine, junk), make_ingest(symbols=(SYMBOL,)))
    assert run.bars == clean_bars
    assert [d["reason"] for d in run.dead_letters] == ["symbol_not_allowed"] * 3
    assert set(run.ingest.views) == {SYMBOL}


def test_depth_diffs_full_of_far_levels_leave_a_bounded_book() -> None:
    """A depth diff could add any number of price levels, kept for ever; 200 diffs of 4,999 new levels each
    would have left a million levels a side."""
    book = OrderBook(SYMBOL)
    book.apply(DepthSnapshot(SYMBOL, None, 10, ((60_000.0, 1.0),), ((60_001.0, 1.0),)))
    for n in range(200):
        levels = tuple((59_000.0 - n * 5_000 - i * 0.01, 1.0) for i in range(4_999))
        book.apply(DepthUpdate(SYMBOL, 0, 11 + n, 11 + n, 10 + n, levels, ()))
    assert len(book.bids) <= order_book.MAX_LEVELS_PER_SIDE + 500
    assert max(book.bids) == 60_000.0  # the touch is kept, the far levels go
    analysis = book.analysis()
    assert analysis is not None and analysis["best_bid"] == 60_000.0


def test_diffs_buffered_before_a_snapshot_are_bounded_by_their_levels() -> None:
    """Unsynced, a book buffered 2,000 diffs of any size: 2,000 × 4,999 levels is ten million."""
    book = OrderBook(SYMBOL)
    for n in range(2_000):
        levels = tuple((50_000.0 + i, 1.0) for i in range(4_999))
        book.apply(DepthUpdate(SYMBOL, 0, n, n, None, levels, ()))
    assert sum(len(d.bids) + len(d.asks) for d in book.buffered) <= order_book.MAX_BUFFERED_LEVELS
