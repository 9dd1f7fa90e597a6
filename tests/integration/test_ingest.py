"""Ingest against the real broker: real days replayed, bad input parked in the DLQ, restarts lose nothing."""

from __future__ import annotations

import base64
import gzip
import threading
import time
from pathlib import Path

import numpy as np
import orjson

from models.data import read_bar_file
from streams.replay import kline_message
from tests.integration.conftest import produce, read_topic, replay
from tests.unit.streams.test_events import BAD_INPUTS

DAY_START, DAY_END = "2023-03-24", "2023-03-25"  # the day of the trading halt: flat minutes, then 80 missing


def _csv_day(data_dir: Path) -> np.ndarray:
    with gzip.open(data_dir / "binance-spot-klines-1m" / "BTCUSDT-1m-2023-03.csv.gz", "rt") as handle:
        table = np.loadtxt(handle, delimiter=",")
    start = 1679616000000  # 2023-03-24 00:00 UTC
    return table[(table[:, 0] >= start) & (table[:, 0] < start + 86_400_000)]


def _bars(messages: list) -> list[dict]:
    return [orjson.loads(m.value) for m in messages]


def _as_rows(bars: list[dict]) -> np.ndarray:
    return np.array([[b["open_time"], b["open"], b["high"], b["low"], b["close"], b["volume"], b["quote_volume"],
                      b["trades"], b["taker_buy_base"], b["taker_buy_quote"]] for b in bars])


def test_replaying_a_real_day_yields_exactly_the_bars_of_the_csv(data_dir, start_worker, worker_env):
    start_worker()
    replay(worker_env, "--data", str(data_dir / "binance-spot-klines-1m"), "--symbols", "BTCUSDT",
           "--start", DAY_START, "--end", DAY_END)
    expected = _csv_day(data_dir)
    assert expected.shape[0] == 1440 - 80
    bars = _bars(read_topic(worker_env["MLRISK_TOPIC_PREFIX"] + "bars", expected.shape[0]))
    got = _as_rows(sorted(bars, key=lambda b: b["open_time"]))
    assert got.shape[0] == expected.shape[0]
    np.testing.assert_array_equal(got, expected[:, [0, 1, 2, 3, 4, 5, 7, 8, 9, 10]])


def test_bad_messages_go_to_the_dlq_and_no_good_bar_is_lost(data_dir, start_worker, worker_env):
    start_worker()
    frame = read_bar_file(data_dir / "binance-spot-klines-1m" / "BTCUSDT-1m-2024-08.csv.gz").slice(0, 240)
    good = [(b"BTCUSDT", kline_message(frame, i)) for i in range(len(frame))]
    bad = [(b"BTCUSDT", raw) for raw, _ in BAD_INPUTS]
    mixed = []
    for i, item in enumerate(good):
        mixed.append(item)
        if i % 8 == 0 and bad:
            mixed.append(bad.pop())
    mixed.extend(bad)
    import asyncio

    prefix = worker_env["MLRISK_TOPIC_PREFIX"]
    asyncio.run(produce(prefix + "market-data", mixed))
    dlq = [orjson.loads(m.value) for m in read_topic(prefix + "market-data-dlq", len(BAD_INPUTS))]
    assert sorted(d["reason"] for d in dlq) == sorted(reason for _, reason in BAD_INPUTS)
    originals = sorted(raw for raw, _ in BAD_INPUTS)
    assert sorted(base64.b64decode(d["raw"]) for d in dlq) == originals
    assert all(d["topic"] == prefix + "market-data" and d["offset"] >= 0 and d["error"] for d in dlq)
    bars = _bars(read_topic(prefix + "bars", len(good)))
    assert [b["open_time"] for b in bars] == [int(t) for t in frame.open_time]


def test_restarting_the_worker_mid_replay_loses_no_bar(data_dir, start_worker, worker_env):
    """Stopping the worker twice mid-replay (SIGTERM) loses no bar and publishes none twice."""
    worker = start_worker()
    prefix = worker_env["MLRISK_TOPIC_PREFIX"]
    seen: list = []
    expected = _csv_day(data_dir)

    def watch() -> None:
        seen.extend(read_topic(prefix + "bars", expected.shape[0], timeout_s=150))

    watcher = threading.Thread(target=watch)
    watcher.start()
    replay(worker_env, "--data", str(data_dir / "binance-spot-klines-1m"), "--symbols", "BTCUSDT",
           "--start", DAY_START, "--end", DAY_END)
    for pause_s in (1.0, 0.5):  # part of the day is processed, then the worker stops
        time.sleep(pause_s)
        worker.stop()
        worker = start_worker()
        assert worker.proc is not None
    watcher.join()
    published = [b["open_time"] for b in _bars(seen)]
    assert sorted(set(published)) == [int(t) for t in expected[:, 0]], "a bar was lost"
    repeated = sorted({t for t in published if published.count(t) > 1})
    assert repeated == [], f"bars published more than once: {repeated}"
