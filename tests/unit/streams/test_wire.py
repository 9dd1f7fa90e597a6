"""The typed wire path (msgspec structs of Binance's shapes) against the checking parser: on every real captured
message and on hostile variants of them, it either yields the very event the checking parser yields, or steps
aside (None) so that the checking parser decides; it never accepts what the checking parser refuses."""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from models.data import load_bars
from streams.ingest.events import BadEvent, MarketEvent, _parse_checked, event_kind, from_wire, parse_event

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
NOW_MS = 1_800_000_000_000


def _capture_lines(folder: str) -> Iterator[bytes]:
    for path in sorted((DATA / folder).glob("*gz")):
        with gzip.open(path, "rb") as lines:
            for line in lines:
                yield line.split(b" ", 1)[1].strip()


def _checked(raw: bytes) -> MarketEvent | BadEvent:
    try:
        return _parse_checked(raw)
    except BadEvent as error:
        return error


@pytest.mark.parametrize("folder", ["binance-futures-ws", "binance-spot-ws"])
def test_every_real_message_gives_the_checking_parsers_event(folder: str) -> None:
    typed: Counter[str] = Counter()
    checked_only: Counter[str] = Counter()
    for raw in _capture_lines(folder):
        expected = _checked(raw)
        event = from_wire(raw)
        if isinstance(expected, BadEvent):  # the REST snapshot line, untagged: `mlrisk replay` tags it
            assert raw.startswith(b'{"lastUpdateId"') and event is None
            continue
        if event is None:
            checked_only[event_kind(expected)] += 1
            continue
        assert event == expected, raw[:200]
        typed[event_kind(event)] += 1
    # Binance's trade, bookTicker (USD-M's carries "e") and depth diffs take the typed path; spot's bookTicker
    # (no "e"), snapshots and mark prices are the checking parser's
    assert typed["trade"] > 10_000 and typed["depthUpdate"] > 10_000
    assert set(checked_only) <= {"bookTicker", "depthSnapshot", "markPriceUpdate"}
    if folder == "binance-futures-ws":
        assert typed["bookTicker"] > 100_000 and checked_only["bookTicker"] == 0


def test_real_klines_take_the_typed_path_unchanged() -> None:
    frame = load_bars(DATA / "binance-spot-klines-1m", "BTCUSDT", 1_704_067_200_000, 1_704_153_600_000)  # 2024-01-01
    seen = 0
    for bar in frame.bars():
        body = {"t": bar.open_time, "T": bar.close_time, "i": "1m", "o": str(bar.open), "h": str(bar.high)}
        body |= {"l": str(bar.low), "c": str(bar.close), "v": str(bar.volume), "q": str(bar.quote_volume)}
        body |= {"n": bar.trades, "V": str(bar.taker_buy_base), "Q": str(bar.taker_buy_quote), "x": True}
        raw = orjson.dumps(
            {"stream": "btcusdt@kline_1m", "data": {"e": "kline", "E": bar.close_time + 1, "s": "BTCUSDT", "k": body}}
        )
        event = from_wire(raw)
        assert event is not None and event == _parse_checked(raw)
        seen += 1
    assert seen == 1_440


TRADE = orjson.loads(next(line for line in _capture_lines("binance-futures-ws") if b"@trade" in line))
DEPTH = orjson.loads(next(line for line in _capture_lines("binance-futures-ws") if b"depthUpdate" in line))


def _variants(message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each field of the event replaced by values of other types and ranges, or dropped."""
    data = message["data"]
    replacements: list[Any] = [None, True, -1, 0, 1.5, 2**63, 2**64 - 1, "", "-1", "1e999", "nan", "x" * 80, [], {}]
    replacements += ["1" * 20, 1e300, "0.000", "２", [["1", "2", "3"]], [[1, 2]], [["-1", "1"]]]
    for key in data:
        for value in replacements:
            yield f"{key}={value!r:.20}", {**message, "data": {**data, key: value}}
        yield f"no {key}", {**message, "data": {k: v for k, v in data.items() if k != key}}
    yield "bare", data
    yield "stream not a string", {**message, "stream": 5}
    yield "interval", {**message, "data": {**data, "e": "kline"}}


@pytest.mark.parametrize("message", [TRADE, DEPTH], ids=["trade", "depthUpdate"])
def test_hostile_variants_are_never_accepted_by_the_typed_path_alone(message: dict[str, Any]) -> None:
    typed = 0
    for name, variant in _variants(message):
        raw = orjson.dumps(variant)
        expected = _checked(raw)
        event = from_wire(raw)
        if event is not None:
            typed += 1
            assert event == expected, name
        if isinstance(expected, BadEvent):
            with pytest.raises(BadEvent) as refused:
                parse_event(raw, NOW_MS)
            assert refused.value.code == expected.code, name  # the same reason, whichever path
    assert typed >= 3  # the sound variants (a bare event, an id still in range) did take the typed path


def test_duplicate_keys_read_as_the_checking_parser_reads_them() -> None:
    raw = orjson.dumps(TRADE)[:-2] + b',"p":"-5"}}'  # a second "p", negative: JSON's last one counts
    assert from_wire(raw) is None
    with pytest.raises(BadEvent, match="non_positive_price"):
        parse_event(raw, NOW_MS)
