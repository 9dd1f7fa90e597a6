"""A real worker on the real broker under hostile input, with real BTCUSDT spot trades around it.

The genuine events are Binance's recorded spot trades of 2024-08-08 23:54-23:59, moved to the present minute by
minute (prices, quantities, ids and the spacing of times unchanged), so that the worker's clock checks meet them
as they would live. Into that stream go the hostile messages of `test_market_data`, 1,000 junk symbols and
garbage on the internal topics the sink reads.

Without the fixes: the 800 KB message's dead letter exceeded the producer's 1 MiB limit and crash-looped the
worker; the ²-id and 5,000-digit-id messages raised outside the parser and went to the DLQ as internal errors
only by luck of a catch-all; a trade id far ahead, a time an hour ahead or a kline from 2100 made every later
genuine BTCUSDT trade a duplicate or late, and the bars stopped; junk symbols took state, changelog and metric
series without bound; a garbage signal stopped the sink agent, and its batch was read again and again.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from models.bars import Bar
from tests.adversarial.conftest import SYMBOL, assert_bounded_dead_letter, feed
from tests.adversarial.test_internal_topics import BAD_BARS, BAD_SIGNALS
from tests.adversarial.test_market_data import CASES, DROPPED, Context
from tests.integration.conftest import produce, read_topic

MAX_SYMBOLS = 100
JUNK_SYMBOLS = 1_000
# hostile messages the broker itself refuses (above its 1 MiB message limit) cannot be sent; one whose refusal
# depends on the worker's clock being the stream's (10 s ahead of it) is proven at the function level
NOT_SENT = {"1.2MB-valid-json", "E-and-T-10s-ahead"}


def _retimed_spot_trades(data_dir: Path) -> tuple[list[bytes], int]:
    """The recorded spot trades, moved by whole minutes so that the last one falls in the previous minute of the
    wall clock; the shift (ms) too."""
    payloads = []
    with gzip.open(data_dir / "binance-spot-ws" / "btcusdt_20240808.gz", "rb") as handle:
        for line in handle:
            payload = line.split(b" ", 1)[1].strip()
            if b"@trade" in payload[:40]:
                payloads.append(orjson.loads(payload))
    last_minute = payloads[-1]["data"]["T"] // 60_000
    shift = (int(time.time() * 1000) // 60_000 - 1 - last_minute) * 60_000
    for message in payloads:
        message["data"]["E"] += shift
        message["data"]["T"] += shift
    return [orjson.dumps(m) for m in payloads], shift


def _klines(data_dir: Path) -> dict[int, np.ndarray]:
    with gzip.open(data_dir / "binance-spot-klines-1m" / "BTCUSDT-1m-2024-08.csv.gz", "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    return {int(row[0]): row for row in table}


def _bar_fields(bar: dict[str, Any]) -> Bar:
    return Bar.from_dict(bar)


@pytest.mark.timeout(300)
def test_hostile_input_through_the_broker_leaves_the_worker_alive_and_the_bars_exact(
    data_dir: Path, start_worker: Any, worker_env: dict[str, str], tmp_path: Path
) -> None:
    # no models: ingest and the sink are what hostile input reaches (the signal stage's decoding is proven on
    # its own function), and training them would cost this suite a minute and a half
    worker = start_worker(MLRISK_MAX_SYMBOLS=str(MAX_SYMBOLS), MLRISK_MODEL_DIR=str(tmp_path / "no-models"))
    prefix = worker_env["MLRISK_TOPIC_PREFIX"]
    genuine, shift = _retimed_spot_trades(data_dir)
    inject_at = len(genuine) // 2
    before = orjson.loads(genuine[inject_at - 1])["data"]
    context = Context(before["E"] + 50, before["t"], before["T"] - before["T"] % 60_000)
    hostile = [(case, hostile(context), reason) for _, case, hostile, reason in CASES if case not in NOT_SENT]
    junk = [
        (
            f"JUNK{i:05d}".encode(),
            orjson.dumps({"symbol": f"JUNK{i:05d}", "ts": context.now_ms, "price": 1.5, "qty": 2.0}),
        )
        for i in range(JUNK_SYMBOLS)
    ]
    key = SYMBOL.encode()

    # BTCUSDT is known before the junk arrives (its messages lead its partition; the junk spreads over all)
    asyncio.run(produce(prefix + "market-data", [(key, raw) for raw in genuine[:inject_at]]))
    assert read_topic(prefix + "bars", 1, timeout_s=60)
    asyncio.run(produce(prefix + "market-data", [(key, raw) for _, raw, _ in hostile] + junk))
    asyncio.run(produce(prefix + "market-data", [(key, raw) for raw in genuine[inject_at:]]))
    internal = [(key, raw) for _, raw in BAD_BARS if raw] + [(key, orjson.dumps(s)) for _, s in BAD_SIGNALS]
    asyncio.run(produce(prefix + "signals", internal))
    asyncio.run(produce(prefix + "executions", [(key, raw) for _, raw in BAD_BARS[:4] if raw]))

    expected = feed([(raw, key, orjson.loads(raw)["data"]["E"] + 50) for raw in genuine]).bars
    bars = [
        orjson.loads(m.value)
        for m in read_topic(prefix + "bars", len(expected) + (MAX_SYMBOLS - 1), timeout_s=120)
        if m.key == key
    ]
    produced = [_bar_fields(b) for b in bars]
    assert produced == expected

    # the full minutes equal Binance's own klines of 2024-08-08 23:55-23:59
    klines = _klines(data_dir)
    full = [b for b in produced if (b.open_time - shift) in klines][1:-1]
    assert len(full) >= 4
    for bar in full:
        row = klines[bar.open_time - shift]
        assert (bar.open, bar.high, bar.low, bar.close, bar.trades) == (row[1], row[2], row[3], row[4], int(row[8]))
        assert bar.volume == pytest.approx(row[5], rel=1e-12)
        assert bar.quote_volume == pytest.approx(row[7], rel=1e-12)

    wanted = sorted(
        [reason for _, _, reason in hostile if reason is not DROPPED]
        + ["too_many_symbols"] * (JUNK_SYMBOLS - (MAX_SYMBOLS - 1))
    )
    letters = read_topic(prefix + "market-data-dlq", len(wanted), timeout_s=60)
    assert sorted(orjson.loads(m.value)["reason"] for m in letters) == wanted
    by_sha = {orjson.loads(m.value)["raw_sha256"]: m for m in letters}
    for case, raw, reason in hostile:
        if reason is not DROPPED:
            letter = by_sha[hashlib.sha256(raw).hexdigest()]
            assert_bounded_dead_letter(orjson.loads(letter.value), letter.value, raw)
            assert letter.key in (key, None), case

    garbage = len(internal) + len([raw for _, raw in BAD_BARS[:4] if raw])
    parked = [orjson.loads(m.value) for m in read_topic(prefix + "internal-dlq", garbage, timeout_s=60)]
    assert len(parked) == garbage
    assert {p["topic"] for p in parked} == {prefix + "signals", prefix + "executions"}
    assert {p["reason"] for p in parked} == {"not_json", "invalid", "too_large"}

    assert worker.proc.poll() is None, "the worker stopped"
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5) as resp:
        exposed = resp.read().decode()
    symbols = set(re.findall(r'mlrisk_events_in_total\{[^}]*symbol="([^"]+)"', exposed))
    assert SYMBOL in symbols and len(symbols) <= MAX_SYMBOLS


def test_a_record_the_broker_refuses_goes_out_as_its_fallback_and_ingest_goes_on(kafka: str, topic_prefix: str) -> None:
    """A dead letter above the producer's request limit raised out of the send, and ingest stopped the worker;
    the restart read the same message again. Here the limit is 2,000 bytes and the dead letter 20,000."""
    from aiokafka import AIOKafkaProducer

    from streams.config import Settings
    from streams.ingest.bars import BarBuilder
    from streams.ingest.rules import Ingest
    from streams.ingest.service import IngestService, Outgoing
    from tests.integration.conftest import consume_all

    settings = Settings.from_env({"MLRISK_TOPIC_PREFIX": topic_prefix})
    topic = settings.dlq_topic

    async def crash(error: BaseException) -> None:
        raise AssertionError(f"ingest would have stopped the worker: {error!r}")

    async def run() -> None:
        service = IngestService(settings, Ingest(BarBuilder(), {}, 5_000), crash)
        service.producer = AIOKafkaProducer(bootstrap_servers=kafka, max_request_size=2_000)
        await service.producer.start()
        try:
            items = [
                Outgoing(topic, b"BTCUSDT", b"x" * 20_000, fallback=lambda: Outgoing(topic, b"BTCUSDT", b"fallback")),
                Outgoing(topic, b"BTCUSDT", b"y" * 20_000),  # no fallback: dropped with an error, not retried
                Outgoing(topic, b"BTCUSDT", b"small"),
            ]
            await asyncio.wait_for(service.settle(items, [await service.send(item) for item in items]), 30)
        finally:
            await service.producer.stop()

    asyncio.run(run())
    assert sorted(m.value for m in asyncio.run(consume_all(topic, 2, 30))) == [b"fallback", b"small"]


def test_the_signal_stage_parks_garbage_bars_and_symbols_outside_the_allow_list(
    model_dir: Path, start_worker: Any, worker_env: dict[str, str]
) -> None:
    """A bad message on `bars` was decoded outside the agent's error handling: Faust restarted the agent in place
    and the rest of its batch was lost; a bar of any symbol made an engine state of 44 KB."""
    worker = start_worker(MLRISK_MODEL_DIR=str(model_dir), MLRISK_SYMBOLS="BTCUSDT")
    prefix = worker_env["MLRISK_TOPIC_PREFIX"]
    bar = {
        "symbol": "BTCUSDT",
        "open_time": 1_723_161_240_000,
        "open": 61800.3,
        "high": 61839.8,
        "low": 61800.0,
        "close": 61807.8,
        "volume": 125.966,
        "received_ms": 1_723_161_300_123,
        "market": {},
    }
    sent = [(b"BTCUSDT", raw) for _, raw in BAD_BARS if raw]
    sent += [(b"ETHUSDT", orjson.dumps({**bar, "symbol": "ETHUSDT"})), (b"BTCUSDT", orjson.dumps(bar))]
    asyncio.run(produce(prefix + "bars", sent))
    parked = [orjson.loads(m.value) for m in read_topic(prefix + "internal-dlq", len(sent) - 1, timeout_s=60)]
    assert sorted(p["reason"] for p in parked).count("symbol_not_allowed") == 1
    assert len(parked) == len(sent) - 1  # every one but the genuine BTCUSDT bar
    assert {p["topic"] for p in parked} == {prefix + "bars"}
    assert worker.proc.poll() is None
