"""Parsing of every accepted event kind, on the contract's examples and real captured lines, and the DLQ reasons."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streams.ingest.events import (
    BadEvent,
    BookTicker,
    DepthUpdate,
    Kline,
    MarkPrice,
    Trade,
    event_kind,
    parse_event,
)

NOW_MS = 1_800_000_000_000  # 2027-01-15: after every recorded event


def test_contract_trade_example_in_combined_stream_wrapper() -> None:
    raw = (
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1672515782136,"s":"BTCUSDT","t":12345,'
        b'"p":"16500.10","q":"0.010","T":1672515782134,"m":true}}'
    )
    event = parse_event(raw, NOW_MS)
    assert event == Trade("BTCUSDT", 1672515782136, 1672515782134, 12345, 16500.10, 0.010, "sell", "trade")


def test_aggtrade_uses_its_aggregate_id_and_buyer_taker() -> None:
    raw = orjson.dumps(
        {
            "e": "aggTrade",
            "E": 1672515782136,
            "s": "ETHUSDT",
            "a": 77,
            "f": 100,
            "l": 105,
            "p": "1200.5",
            "q": "3",
            "T": 1672515782130,
            "m": False,
        }
    )
    event = parse_event(raw, NOW_MS)
    assert isinstance(event, Trade)
    assert (event.trade_id, event.taker_side, event.kind) == (77, "buy", "aggTrade")


def test_kline_example_and_microsecond_times_normalised() -> None:
    k = {
        "t": 1735689600000000,
        "T": 1735689659999999,
        "s": "BTCUSDT",
        "i": "1m",
        "o": "93576.0",
        "c": "93610.93",
        "h": "93610.93",
        "l": "93537.5",
        "v": "8.21827",
        "n": 2631,
        "x": True,
        "q": "768978.7552247",
        "V": "3.95157",
        "Q": "369757.3265289",
    }
    event = parse_event(orjson.dumps({"e": "kline", "E": 1735689660000, "s": "BTCUSDT", "k": k}), NOW_MS)
    assert isinstance(event, Kline)
    assert event.open_time == 1735689600000 and event.close_time == 1735689659999
    assert event.closed and event.trades == 2631 and event.taker_buy_base == 3.95157


def test_generic_tick_accepts_slash_symbol_and_optional_side() -> None:
    event = parse_event(b'{"symbol":"ETH/USDT","ts":1700000000000,"price":2000.5,"qty":0.3,"side":"buy"}', NOW_MS)
    assert event == Trade("ETHUSDT", 1700000000000, 1700000000000, None, 2000.5, 0.3, "buy", "tick")
    no_side = parse_event(b'{"symbol":"ETHUSDT","ts":1700000000000000,"price":2000.5,"qty":0.3}', NOW_MS)
    assert isinstance(no_side, Trade) and no_side.taker_side is None and no_side.event_time_ms == 1700000000000


def _capture_lines(path: Path) -> list[bytes]:
    with gzip.open(path, "rb") as handle:
        return [line.split(b" ", 1)[1] for line in handle if line.strip()]


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        # counts from the data folder's README, an independent inventory of each file
        ("binance-futures-ws/btcusdt_20240719.gz", {"bookTicker": 45_147, "depthUpdate": 5_696, "trade": 9_727}),
        (
            "binance-futures-ws/btcusdt_20230405.dat.gz",
            {"bookTicker": 37_440, "depthUpdate": 11_788, "trade": 10_738, "markPriceUpdate": 415},
        ),
        ("binance-spot-ws/ethusdt_20240809.gz", {"bookTicker": 34_681, "depthUpdate": 3_036, "trade": 8_409}),
    ],
)
def test_every_real_captured_message_parses(data_dir: Path, relative: str, expected: dict[str, int]) -> None:
    kinds = Counter(event_kind(parse_event(line, NOW_MS)) for line in _capture_lines(data_dir / relative))
    assert dict(kinds) == expected


def test_real_futures_messages_carry_their_fields(data_dir: Path) -> None:
    lines = _capture_lines(data_dir / "binance-futures-ws/btcusdt_20230405.dat.gz")
    events = [parse_event(line, NOW_MS) for line in lines]
    marks = [e for e in events if isinstance(e, MarkPrice)]
    assert all(27_000 < m.mark_price < 30_000 and m.funding_rate is not None for m in marks)
    depth = [e for e in events if isinstance(e, DepthUpdate)]
    # every diff of the capture chains onto the previous one (README: no gaps)
    assert all(b.previous_update_id == a.last_update_id for a, b in zip(depth, depth[1:], strict=False))
    insurance = [e for e in events if isinstance(e, Trade) and not e.regular]
    assert [(t.trade_id, t.price) for t in insurance] == [(3535191080, 28722.50)]


def test_spot_book_ticker_without_event_time(data_dir: Path) -> None:
    line = next(x for x in _capture_lines(data_dir / "binance-spot-ws/btcusdt_20240808.gz") if b"@bookTicker" in x)
    event = parse_event(line, NOW_MS)
    assert isinstance(event, BookTicker) and event.event_time_ms is None and event.bid_price < event.ask_price


TRADE = {
    "e": "trade",
    "E": 1672515782136,
    "s": "BTCUSDT",
    "t": 1,
    "p": "16500.10",
    "q": "0.010",
    "T": 1672515782134,
    "m": True,
}


def _trade(**changes: object) -> bytes:
    body = {**TRADE, **changes}
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


BAD_INPUTS = [
    (b"not json at all", "not_json"),
    (b'{"e":"trade","E":1672515782136,"s":"BTCUSDT"', "not_json"),  # truncated
    (b"", "not_json"),
    (b"[1, 2, 3]", "not_object"),
    (b'"a string"', "not_object"),
    (b'{"stream":"btcusdt@trade","data":[1]}', "not_object"),
    (b'{"e":"forceOrder","s":"BTCUSDT"}', "unknown_event"),
    (b'{"hello":"world"}', "unknown_event"),
    (_trade(s=...), "missing_field"),
    (_trade(p=...), "missing_field"),
    (_trade(s=123), "bad_symbol"),
    (_trade(s="BTC USDT!"), "bad_symbol"),
    (_trade(p="abc"), "bad_type"),
    (_trade(p=True), "bad_type"),
    (_trade(p="NaN"), "non_finite"),
    (_trade(q="Infinity"), "non_finite"),
    (_trade(p="0"), "non_positive_price"),
    (_trade(p="-5.0"), "non_positive_price"),
    (_trade(q="-0.5"), "negative_quantity"),
    (_trade(m="yes"), "bad_type"),
    (_trade(E=1672515782136 + 86_400_000 * 365 * 5, T=1672515782134 + 86_400_000 * 365 * 5), "future_timestamp"),
    (_trade(E="yesterday"), "bad_timestamp"),
    (_trade(E=-1), "bad_timestamp"),
    (_trade(E=12345), "bad_timestamp"),  # seconds since 1970: a unit error
    (b'{"symbol":"ETHUSDT","ts":1700000000000,"price":2000.5,"qty":0.3,"side":"hold"}', "bad_type"),
    (b'{"symbol":"ETHUSDT","ts":1700000000000,"qty":0.3}', "missing_field"),
    (orjson.dumps({"e": "kline", "E": 1, "s": "BTCUSDT", "k": "x"}), "bad_type"),
    (
        orjson.dumps(
            {
                "e": "kline",
                "E": 1735689660000,
                "s": "BTCUSDT",
                "k": {
                    "t": 1735689600000,
                    "T": 1735689659999,
                    "i": "5m",
                    "o": "1",
                    "c": "1",
                    "h": "1",
                    "l": "1",
                    "v": "1",
                    "x": True,
                },
            }
        ),
        "bad_interval",
    ),
    (
        orjson.dumps(
            {
                "e": "kline",
                "E": 1735689660000,
                "s": "BTCUSDT",
                "k": {
                    "t": 1735689600000,
                    "T": 1735689659999,
                    "i": "1m",
                    "o": "10",
                    "c": "11",
                    "h": "10.5",
                    "l": "9",
                    "v": "1",
                    "x": True,
                },
            }
        ),
        "bad_ohlc",
    ),
]


@pytest.mark.parametrize(("raw", "reason"), BAD_INPUTS)
def test_bad_input_is_rejected_with_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(BadEvent) as caught:
        parse_event(raw, NOW_MS)
    assert caught.value.code == reason
    assert caught.value.detail  # a human-readable explanation for the DLQ message


def test_future_check_uses_the_given_clock() -> None:
    raw = _trade(E=1_700_000_000_000 + 10 * 60_000, T=1_700_000_000_000 + 10 * 60_000)
    assert isinstance(parse_event(raw, now_ms=1_700_000_000_000, max_future_ms=3_600_000), Trade)
    with pytest.raises(BadEvent, match="future_timestamp"):
        parse_event(raw, now_ms=1_700_000_000_000, max_future_ms=60_000)
