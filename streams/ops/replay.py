"""Publish real market data to `market-data`, keyed by symbol, in exchange-time order.

Sources under the data folder:
- 1-minute bar files (Binance's 12-column kline dumps or 6-column OHLCV) → closed Binance `kline` events;
- recorded websocket captures (`<local_ts> <json>` per line, `binance-*-ws/`) → the original messages, byte for
  byte; the REST order-book snapshot lines are tagged `{"e": "depthSnapshot", "s": SYMBOL, ...}`.
Several files and symbols are merged by exchange time (`E`, or `T`, or the kline's close time). Spot bookTicker
messages carry no event time: they are placed at their receive time shifted by the file's median clock lag.
"""

from __future__ import annotations

import asyncio
import gzip
import heapq
import re
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from models.bars import to_epoch_ms
from models.data import BarFrame, bar_files, load_bars, symbol_from_path
from streams.kafka_security import PRODUCER_BATCH_BYTES

CAPTURE_RE = re.compile(r"^([a-z0-9]+)_(\d{8})(\.dat)?\.gz$")


@dataclass(frozen=True, slots=True)
class ReplayMessage:
    time_ms: int
    symbol: str
    value: bytes


def capture_files(data_dir: Path, symbols: set[str] | None) -> list[Path]:
    files = []
    for path in sorted(Path(data_dir).rglob("*.gz")) if Path(data_dir).is_dir() else [Path(data_dir)]:
        match = CAPTURE_RE.match(path.name)
        if match and (symbols is None or match.group(1).upper() in symbols):
            files.append(path)
    return files


def kline_message(frame: BarFrame, i: int) -> bytes:
    """One bar as the closed Binance kline event a websocket subscriber would have received."""
    open_time = int(frame.open_time[i])
    close_time = open_time + 59_999
    k: dict[str, object] = {
        "t": open_time,
        "T": close_time,
        "s": frame.symbol,
        "i": "1m",
        "o": repr(float(frame.open[i])),
        "c": repr(float(frame.close[i])),
        "h": repr(float(frame.high[i])),
        "l": repr(float(frame.low[i])),
        "v": repr(float(frame.volume[i])),
        "x": True,
    }
    if frame.has_flow:
        k["n"] = int(frame.trades[i])
        k["q"] = repr(float(frame.quote_volume[i]))
        k["V"] = repr(float(frame.taker_buy_base[i]))
        k["Q"] = repr(float(frame.taker_buy_quote[i]))
    return orjson.dumps({"e": "kline", "E": close_time + 1, "s": frame.symbol, "k": k})


def bar_messages(frame: BarFrame) -> Iterator[ReplayMessage]:
    for i in range(len(frame)):
        yield ReplayMessage(int(frame.open_time[i]) + 60_000, frame.symbol, kline_message(frame, i))


def _exchange_time(data: dict) -> int | None:
    for key in ("E", "T"):
        value = data.get(key)
        if isinstance(value, int) and value > 0:
            return to_epoch_ms(value)
    return None


def capture_messages(path: Path, start_ms: int | None, end_ms: int | None) -> list[ReplayMessage]:
    """One capture file's messages, sorted by exchange time (stable, so receive order breaks ties)."""
    symbol = CAPTURE_RE.match(path.name).group(1).upper()  # type: ignore[union-attr]
    rows: list[tuple[int, int | None, bytes]] = []
    with gzip.open(path, "rb") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            stamp, _, payload = line.partition(b" ")
            message = orjson.loads(payload)
            data = message.get("data", message) if isinstance(message, dict) else message
            if isinstance(message, dict) and "lastUpdateId" in message and "stream" not in message:
                tagged = {"e": "depthSnapshot", "s": symbol, **message}
                payload = orjson.dumps(tagged)
                data = tagged
            rows.append((to_epoch_ms(int(stamp)), _exchange_time(data), payload))
    lags = [event - local for local, event, _ in rows if event is not None]
    lag = int(statistics.median(lags)) if lags else 0
    messages = [
        ReplayMessage(event if event is not None else local + lag, symbol, payload) for local, event, payload in rows
    ]
    messages.sort(key=lambda m: m.time_ms)
    return [
        m for m in messages if (start_ms is None or m.time_ms >= start_ms) and (end_ms is None or m.time_ms < end_ms)
    ]


def collect(
    data_dir: Path, symbols: list[str] | None, start_ms: int | None, end_ms: int | None, source: str = "auto"
) -> list[Iterator[ReplayMessage]]:
    """The ordered message streams to merge: bar files per symbol and capture files."""
    wanted = {s.upper() for s in symbols} if symbols else None
    streams: list[Iterator[ReplayMessage]] = []
    if source in ("auto", "bars"):
        bar_symbols = (
            sorted({symbol_from_path(p) for p in bar_files(data_dir)} & (wanted or set()))
            if wanted
            else sorted({symbol_from_path(p) for p in bar_files(data_dir)})
        )
        for symbol in bar_symbols:
            frame = load_bars(data_dir, symbol, start_ms, end_ms)
            if len(frame):
                streams.append(bar_messages(frame))
    if source in ("auto", "captures"):
        for path in capture_files(Path(data_dir), wanted):
            messages = capture_messages(path, start_ms, end_ms)
            if messages:
                streams.append(iter(messages))
    return streams


def merged(streams: list[Iterator[ReplayMessage]]) -> Iterator[ReplayMessage]:
    return heapq.merge(*streams, key=lambda m: m.time_ms)


async def publish(
    messages: list[ReplayMessage],
    kafka: dict[str, Any],
    topic: str,
    speed: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Send the messages in order, keyed by symbol; `speed` x real time, or as fast as possible when None.

    `kafka`: the client options of `streams.kafka_security.client_options`."""
    producer = AIOKafkaProducer(
        **kafka, linger_ms=5, acks="all", max_batch_size=PRODUCER_BATCH_BYTES, enable_idempotence=True
    )
    await producer.start()
    sent = 0
    try:
        first_ms = messages[0].time_ms if messages else 0
        started = time.monotonic()
        pending = []
        for message in messages:
            if speed:
                due = (message.time_ms - first_ms) / 1000.0 / speed
                delay = due - (time.monotonic() - started)
                if delay > 0:
                    await asyncio.sleep(delay)
            pending.append(await producer.send(topic, message.value, key=message.symbol.encode()))
            sent += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
                if progress:
                    progress(sent)
        await asyncio.gather(*pending)
        await producer.flush()
        if progress:
            progress(sent)
    finally:
        await producer.stop()
    return sent
