"""Ingest against the real broker: real days replayed, bad input parked in the DLQ, restarts lose nothing."""

from __future__ import annotations

import base64
import gzip
import threading
import time
from pathlib import Path

import numpy as np
import orjson

from models.bars import parse_iso_ms
from models.data import read_bar_file
from streams.ops.replay import kline_message
from tests.integration.conftest import free_port, produce, read_topic, replay
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
    return np.array(
        [
            [
                b["open_time"],
                b["open"],
                b["high"],
                b["low"],
                b["close"],
                b["volume"],
                b["quote_volume"],
                b["trades"],
                b["taker_buy_base"],
                b["taker_buy_quote"],
            ]
            for b in bars
        ]
    )


def test_replaying_a_real_day_yields_exactly_the_bars_of_the_csv(data_dir, start_worker, worker_env):
    start_worker()
    replay(
        worker_env,
        "--data",
        str(data_dir / "binance-spot-klines-1m"),
        "--symbols",
        "BTCUSDT",
        "--start",
        DAY_START,
        "--end",
        DAY_END,
    )
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


def _paced_replay(
    env: dict[str, str], data_dir: Path, symbols: str, start: str, end: str, speed: float
) -> threading.Thread:
    """Replay in the background at `speed` x real time, so that workers can stop and join while it runs."""
    args = (
        "--data",
        str(data_dir),
        "--source",
        "bars",
        "--symbols",
        symbols,
        "--start",
        start,
        "--end",
        end,
        "--speed",
        str(speed),
    )
    thread = threading.Thread(target=replay, args=(env, *args))
    thread.start()
    return thread


def _exactly_once(published: list[dict], expected: dict[str, list[int]]) -> None:
    for symbol, open_times in expected.items():
        times = [b["open_time"] for b in published if b["symbol"] == symbol]
        assert sorted(set(times)) == open_times, f"a {symbol} bar was lost"
        repeated = sorted({t for t in times if times.count(t) > 1})
        assert repeated == [], f"{symbol} bars published more than once: {repeated}"


def test_restarting_the_worker_mid_replay_loses_no_bar(data_dir, start_worker, worker_env):
    """Stopping the worker twice while a day streams in (SIGTERM) loses no bar and publishes none twice."""
    worker = start_worker()
    prefix = worker_env["MLRISK_TOPIC_PREFIX"]
    expected = _csv_day(data_dir)
    feeder = _paced_replay(worker_env, data_dir, "BTCUSDT", DAY_START, DAY_END, speed=86_400 / 20)  # ~20 s
    for pause_s in (5.0, 5.0):  # part of the day is processed, then the worker stops and another starts
        time.sleep(pause_s)
        worker.stop()
        worker = start_worker()
    feeder.join()
    seen = read_topic(prefix + "bars", expected.shape[0], timeout_s=150)
    _exactly_once(_bars(seen), {"BTCUSDT": [int(t) for t in expected[:, 0]]})


def test_workers_joining_and_leaving_mid_replay_hand_over_every_bar_once(data_dir, start_worker, worker_env):
    """A second worker joins while a day of two symbols streams in, then the first leaves: the partitions change
    hands twice with their bar state, and every bar of both symbols is published exactly once."""
    from models.data import load_bars

    start, end = "2023-10-10", "2023-10-11"
    env = {**worker_env, "MLRISK_PARTITIONS": "4"}
    first = start_worker(MLRISK_PARTITIONS="4")
    feeder = _paced_replay(env, data_dir, "BTCUSDT,ETHUSDT", start, end, speed=86_400 / 24)  # ~24 s
    time.sleep(6)
    second = start_worker(MLRISK_PARTITIONS="4", MLRISK_WEB_PORT=str(free_port()))
    time.sleep(6)
    first.stop()
    feeder.join()
    span = parse_iso_ms(start), parse_iso_ms(end)
    expected = {
        symbol: [int(t) for t in load_bars(data_dir, symbol, *span).open_time] for symbol in ("BTCUSDT", "ETHUSDT")
    }
    assert all(len(times) > 1000 for times in expected.values())
    seen = read_topic(worker_env["MLRISK_TOPIC_PREFIX"] + "bars", sum(map(len, expected.values())), timeout_s=150)
    _exactly_once(_bars(seen), expected)
    assert second.proc is not None and second.proc.poll() is None


def test_bars_carry_the_mark_price_and_the_order_book_of_their_close(data_dir, start_worker, worker_env):
    """A real futures capture (REST snapshot, depth diffs, book tickers, mark prices, trades): every bar after the
    book is in sync carries the mark price, spread and depth the risk decision uses, measured at its close."""
    start_worker()
    replay(
        worker_env,
        "--data",
        str(data_dir / "binance-futures-ws"),
        "--source",
        "captures",
        "--symbols",
        "BTCUSDT",
        "--start",
        "2023-04-04T23:58:00",
        "--end",
        "2023-04-05T00:07:00",
    )
    bars = _bars(read_topic(worker_env["MLRISK_TOPIC_PREFIX"] + "bars", 8, timeout_s=60))
    assert len(bars) >= 8
    for bar in bars:
        market = bar["market"]
        assert abs(market["mark_price"] / bar["close"] - 1) < 0.002
        assert 0 <= market["spread_bps"] < 2
        depth = market["depth_usdt"]
        assert 0 < depth["0.1%"] < depth["0.5%"] < depth["1%"]
        assert -1 <= market["book_imbalance"] <= 1
