"""Hostile input against the project's own ingest functions, with real BTCUSDT futures trades around it.

`feed` runs the real `Ingest` (parser, symbol limits, bar builder, order books) over genuine trades captured
from Binance, with hostile messages injected mid-stream, the receiver's clock following the genuine event times
as it would live. Comparing its bars with those of the genuine trades alone shows what a hostile message did.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from models.bars import Bar
from streams.ingest.bars import BarBuilder
from streams.ingest.book import OrderBook
from streams.ingest.rules import Ingest
from tests.integration.conftest import (  # noqa: F401  (the real services and workers, as fixtures)
    database_url,
    kafka,
    model_dir,
    start_worker,
    topic_prefix,
    worker_env,
)

SYMBOL = "BTCUSDT"
GENUINE_TRADES = 6_000  # about two minutes of BTCUSDT futures trades, 2024-08-08 23:54
INJECT_AT = 3_000  # after the first minute has closed
CLOCK_LEAD_MS = 50  # the receiver's clock: the genuine event time plus a network delay
DLQ_MAX_BYTES = 90_000  # 64 KiB of the original in base64 (87,384 B) plus the other fields


@dataclass(slots=True)
class Run:
    bars: list[Bar]
    dead_letters: list[dict[str, Any]]
    raw_dead_letters: list[bytes]
    ingest: Ingest
    rekeyed: list[str] = field(default_factory=list)


def genuine_trades(data_dir: Path, count: int = GENUINE_TRADES) -> list[tuple[bytes, int]]:
    """Real trade messages as the exchange sent them, with their event times."""
    trades = []
    with gzip.open(data_dir / "binance-futures-ws" / "btcusdt_20240808.gz", "rb") as handle:
        for line in handle:
            raw = line.split(b" ", 1)[1].strip()
            if b"@trade" in raw[:40]:
                trades.append((raw, orjson.loads(raw)["data"]["E"]))
                if len(trades) == count:
                    break
    return trades


def make_ingest(**options: Any) -> Ingest:
    return Ingest(BarBuilder(3_000), {}, 5_000, book_factory=OrderBook, **options)


def feed(items: list[tuple[bytes, bytes | None, int]], ingest: Ingest | None = None) -> Run:
    """Run (message, key, receiver clock) through ingest; close what is open at the end."""
    ingest = ingest or make_ingest()
    bars: list[Bar] = []
    letters: list[bytes] = []
    rekeyed: list[str] = []
    for offset, (raw, key, now_ms) in enumerate(items):
        result = ingest.handle(raw, key, "market-data", 0, offset, now_ms)
        bars.extend(result.bars)
        if result.dead_letter is not None:
            letters.append(result.dead_letter)
        if result.rekey_symbol is not None:
            rekeyed.append(result.rekey_symbol)
    for symbol, state in ingest.working.items():
        if symbol == SYMBOL:
            bars.extend(ingest.builder.close_all(state))
    return Run(bars, [orjson.loads(d) for d in letters], letters, ingest, rekeyed)


def with_hostile(
    genuine: list[tuple[bytes, int]], hostile: list[bytes], at: int = INJECT_AT, key: bytes | None = SYMBOL.encode()
) -> list[tuple[bytes, bytes | None, int]]:
    now = genuine[at - 1][1] + CLOCK_LEAD_MS
    items = [(raw, SYMBOL.encode(), e + CLOCK_LEAD_MS) for raw, e in genuine[:at]]
    items += [(raw, key, now) for raw in hostile]
    items += [(raw, SYMBOL.encode(), e + CLOCK_LEAD_MS) for raw, e in genuine[at:]]
    return items


def assert_bounded_dead_letter(letter: dict[str, Any], encoded: bytes, original: bytes) -> None:
    """The contract's bounds: error ≤ 256 characters, at most 64 KiB of the original, its length and sha256."""
    assert len(encoded) <= DLQ_MAX_BYTES
    assert len(letter["error"]) <= 256
    assert letter["raw_length"] == len(original)
    assert letter["raw_sha256"] == hashlib.sha256(original).hexdigest()
    assert base64.b64decode(letter["raw"]) == original[:65_536]
    assert letter["raw_truncated"] is (len(original) > 65_536)


@pytest.fixture(scope="session")
def genuine(data_dir: Path) -> list[tuple[bytes, int]]:
    return genuine_trades(data_dir)


@pytest.fixture(scope="session")
def clean_bars(genuine: list[tuple[bytes, int]]) -> list[Bar]:
    bars = feed(with_hostile(genuine, [])).bars
    assert len(bars) >= 2
    return bars
