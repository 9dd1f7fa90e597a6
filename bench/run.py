"""`mlrisk bench`: the system's figures against baselines measured in the same run, on real trades.

- passthrough: a plain aiokafka consumer → producer copying the same messages between two topics on the same
  broker (the baseline every throughput is divided by);
- ingest: a worker without models (parse, validate, dedupe, bars);
- pipeline: a worker with models (ingest + bars + features + ensemble + risk + signals + paper + sink);
- latency: event in (the producer sends the event that closes a bar) → signal out (a subscriber receives it),
  at 1,000 events/s offered: BTCUSDT's real futures trades with ETHUSDT's real closed klines among them (see
  `latency_feed`), after both symbols were warmed up on klines;
- sink: batched multi-row inserts against row-by-row inserts into the real database; the same into a
  hypertable against a plain table, and the API's 30-day performance query from the continuous aggregate
  against the raw rows (`bench/timescale_bench.py`);
- inference per model at batch 1 and 64, one risk decision, the worker's RSS;
- scale (`bench/scale.py`): a batched passthrough (the throughput baseline that is a real limit), minute-boundary
  bursts of 1 to 200 symbols (one worker, then two in one group, then the signal stage in a process apart from
  ingest and the sink), steady latency over 50 symbols, and memory
  and lag at 200 symbols. `--only` runs some parts (`PARTS`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import os
import platform
import socket
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.timescale_bench import performance_query_aggregate_vs_raw, sink_hypertable_vs_plain
from streams.config import REPO_ROOT, Settings
from streams.kafka_security import client_options
from streams.ops.probe import metric
from streams.ops.worker_process import WorkerProcess

DATA = REPO_ROOT.parent / "shared" / "data"
CAPTURES = [
    ("binance-futures-ws", "btcusdt_20240808.gz"),
    ("binance-futures-ws", "ethusdt_20240808.gz"),
    ("binance-futures-ws", "btcusdt_20240718.gz"),
    ("binance-futures-ws", "btcusdt_20240719.gz"),
    ("binance-futures-ws", "ethusdt_20240718.gz"),
    ("binance-futures-ws", "ethusdt_20240719.gz"),
]


def real_trades(limit: int) -> list[tuple[bytes, bytes, int, int]]:
    """(key, raw message, event time ms, trade time ms) of real futures trades, in exchange-time order."""
    rows = []
    for folder, name in CAPTURES:
        with gzip.open(DATA / folder / name, "rb") as handle:
            for line in handle:
                payload = line.split(b" ", 1)[1].strip()
                if b'"e":"trade"' not in payload:
                    continue
                data = orjson.loads(payload)["data"]
                rows.append((data["s"].encode(), payload, int(data["E"]), int(data["T"])))
    rows.sort(key=lambda r: r[2])
    return rows[:limit]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def produce(
    kafka: dict[str, Any], topic: str, items: list[tuple[bytes, bytes]], rate: float | None = None
) -> list[float]:
    """Send everything (paced at `rate` messages/s when given); the wall time each message was handed over."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**kafka, linger_ms=2, acks=1, max_batch_size=512 * 1024)
    await producer.start()
    sent_at = []
    try:
        start = time.monotonic()
        futures = []
        # paced, the deliveries are awaited every second or so: each pending one holds a future and its message,
        # which a collection of the bench's heap would walk while it times
        awaited_every = 1_000 if rate else 10_000
        for i, (key, value) in enumerate(items):
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent_at.append(time.time())
            futures.append(await producer.send(topic, value, key=key))
            if len(futures) >= awaited_every:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent_at


async def ensure(kafka: dict[str, Any], *topics: str, partitions: int = 4) -> None:
    from aiokafka.admin import NewTopic

    from streams.topics import create_missing_topics

    await create_missing_topics(kafka, [NewTopic(t, partitions, 1) for t in topics])


CopyBatch = Callable[[Any, dict[Any, list[Any]], str], Awaitable[int]]


async def timed_copy(kafka: dict[str, Any], items: list[tuple[bytes, bytes]], copy: CopyBatch) -> float:
    """Messages per second of `copy` (producer, one `getmany` batch, sink topic → messages copied) moving `items`
    from one fresh topic to another, timed from the first message read to the last one delivered."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    source, sink = f"bench-{uuid.uuid4().hex[:8]}-in", f"bench-{uuid.uuid4().hex[:8]}-out"
    await ensure(kafka, source, sink)
    consumer = AIOKafkaConsumer(
        source, **kafka, group_id=f"bench-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest", enable_auto_commit=True
    )
    producer = AIOKafkaProducer(**kafka, linger_ms=2, acks=1, max_batch_size=512 * 1024)
    await consumer.start()
    await producer.start()
    try:
        await asyncio.sleep(2)  # joined and assigned
        feeder = asyncio.create_task(produce(kafka, source, items))
        copied, first = 0, None
        while copied < len(items):
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            if batch:
                first = first or time.monotonic()
                copied += await copy(producer, batch, sink)
        await producer.flush()
        elapsed = time.monotonic() - (first or time.monotonic())
        await feeder
    finally:
        await consumer.stop()
        await producer.stop()
    return len(items) / elapsed


async def copy_each(producer: Any, batch: dict[Any, list[Any]], sink: str) -> int:
    """The per-message copy: each record produced and its hand-over awaited on its own."""
    copied = 0
    for records in batch.values():
        for record in records:
            await producer.send(sink, record.value, key=record.key)
            copied += 1
    return copied


async def passthrough(kafka: dict[str, Any], items: list[tuple[bytes, bytes]]) -> float:
    """Baseline: consume every message from one topic and produce it to another; messages per second."""
    return await timed_copy(kafka, items, copy_each)


def start_worker(env: dict[str, str], home: Path) -> WorkerProcess:
    """A started worker, ready, logging to `home`/worker.log."""
    return WorkerProcess(env, home / "worker.log").start(timeout_s=120.0)


def worker_env(settings: Settings, prefix: str, model_dir: Path | None, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MLRISK_TOPIC_PREFIX=prefix,
        MLRISK_WEB_PORT=str(free_port()),
        MLRISK_HOME=str(home),
        MLRISK_MODEL_DIR=str(model_dir or home / "no-models"),
        MLRISK_PUBLISH_HOLD="true",
        MLRISK_PARTITIONS="4",
    )
    if settings.database_url is None:
        from streams.sink.db import database_url

        env["DATABASE_URL"] = database_url(settings)
    return env


def stream_rate(
    settings: Settings, env: dict[str, str], items: list[tuple[bytes, bytes]], counter: str, expected: float
) -> float:
    """Offer everything at once to a running worker; messages per second from first send to last counted.

    The first message goes alone, and the clock starts once it is counted: the worker's consumer has joined its
    group and been assigned, as the baselines' consumers have before their clocks start. A worker just started
    otherwise spends the first second or so of the figure joining.
    """
    kafka, topic, port = (
        client_options(settings),
        env["MLRISK_TOPIC_PREFIX"] + "market-data",
        int(env["MLRISK_WEB_PORT"]),
    )
    asyncio.run(produce(kafka, topic, items[:1]))
    _wait_for_metric(port, counter, expected - len(items) + 1, 120.0)
    start = time.monotonic()
    asyncio.run(produce(kafka, topic, items[1:]))
    _wait_for_metric(port, counter, expected, 600.0)
    return (len(items) - 1) / (time.monotonic() - start)


def _wait_for_metric(port: int, counter: str, value: float, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while metric(port, counter) < value and time.monotonic() < deadline:
        time.sleep(0.05)


def warm_up_klines(
    minutes: int, before_ms: int, symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
) -> list[tuple[bytes, bytes]]:
    """Real klines of the symbols ending at `before_ms`, so that the features are warm when trades begin."""
    from models.data import load_bars
    from streams.ops.replay import kline_message

    items = []
    for symbol in symbols:
        frame = load_bars(DATA, symbol, before_ms - minutes * 60_000, before_ms)
        if len(frame) == 0:  # ETHUSDT bars do not cover every capture day: borrow BTCUSDT's shape
            continue
        items += [(symbol.encode(), kline_message(frame, i)) for i in range(len(frame))]
    return items


KLINE_SYMBOL = "ETHUSDT"  # fed by closed klines in the latency run, beside BTCUSDT's trades
KLINE_START = "2024-10-01"  # where ETHUSDT's 1-minute bars cover a stretch long enough
KLINES_EVERY = 50  # one kline among this many events


def latency_feed(
    trades: list[tuple[bytes, bytes, int, int]], warm_minutes: int
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], list[tuple[str, int]]]:
    """The paced feed of the latency run, its warm-up, and what closes a bar at each position of the feed.

    A real mixed feed: BTCUSDT's futures trades (a bar closes on the first trade past its minute and the allowed
    lateness) and ETHUSDT's closed 1-minute klines, one among `KLINES_EVERY` events (each closes its bar), so that
    a minute of offered load yields hundreds of signals instead of the handful that trades alone close.
    Item i of the third list is ("trade", event ms) or ("kline", open time ms).
    """
    from models.bars import parse_iso_ms
    from models.data import load_bars
    from streams.ops.replay import kline_message

    btc = [t for t in trades if t[0] == b"BTCUSDT"]
    first_trade_ms = btc[0][3] - btc[0][3] % 60_000
    start = parse_iso_ms(KLINE_START)
    # an hour beyond what the feed needs: minutes missing from the data must not leave it short
    klines = load_bars(DATA, KLINE_SYMBOL, start, start + (warm_minutes + len(btc) // KLINES_EVERY + 61) * 60_000)
    warm = warm_up_klines(warm_minutes, first_trade_ms, ("BTCUSDT",))
    warm += [(KLINE_SYMBOL.encode(), kline_message(klines, i)) for i in range(warm_minutes)]
    feed: list[tuple[bytes, bytes]] = []
    closes: list[tuple[str, int]] = []
    k = warm_minutes
    for i, (key, raw, event_ms, _) in enumerate(btc):
        if i % KLINES_EVERY == KLINES_EVERY - 1 and k < len(klines):
            feed.append((KLINE_SYMBOL.encode(), kline_message(klines, k)))
            closes.append(("kline", int(klines.open_time[k])))
            k += 1
        feed.append((key, raw))
        closes.append(("trade", event_ms))
    return warm, feed, closes


async def latency_run(
    settings: Settings, env: dict[str, str], feed: list[tuple[bytes, bytes]], closes: list[tuple[str, int]], rate: float
) -> dict[str, Any]:
    """Offer the feed at `rate`/s; for each signal, the time from sending the event that closed its bar to
    receiving the signal on the topic."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        env["MLRISK_TOPIC_PREFIX"] + "signals", **client_options(settings), group_id=None, auto_offset_reset="latest"
    )
    await consumer.start()
    received: list[tuple[float, dict]] = []

    async def listen() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batch.values():
                received.extend((now, orjson.loads(r.value)) for r in records)

    listener = asyncio.create_task(listen())
    await asyncio.sleep(1)
    sent_at = await produce(client_options(settings), env["MLRISK_TOPIC_PREFIX"] + "market-data", feed, rate)
    await asyncio.sleep(15)  # the last minutes close on the quiet-symbol flush
    listener.cancel()
    await consumer.stop()
    lateness = settings.allowed_lateness_ms
    trade_times: list[tuple[int, float]] = []
    kline_sent: dict[int, float] = {}
    for (kind, ms), at in zip(closes, sent_at, strict=True):
        if kind == "trade":
            trade_times.append((ms, at))
        else:
            kline_sent[ms] = at
    by_kind: dict[str, list[float]] = {"trade": [], "kline": []}
    first_trade_ms = trade_times[0][0] if trade_times else 0
    for got_at, sig in received:
        close_ms = sig["bar_close_time"]
        if sig["symbol"] == KLINE_SYMBOL:
            sent = kline_sent.get(close_ms + 1 - 60_000)
            if sent is not None:
                by_kind["kline"].append((got_at - sent) * 1000)
        elif close_ms >= first_trade_ms:  # not a warm-up bar
            sent = next((t for event_ms, t in trade_times if event_ms >= close_ms + 1 + lateness), None)
            if sent is not None:
                by_kind["trade"].append((got_at - sent) * 1000)
    latencies = by_kind["trade"] + by_kind["kline"]
    if not latencies:
        return {"p50": None, "p99": None, "samples": 0, "at_msgs_per_s": rate}
    arr = np.array(latencies)
    report: dict[str, Any] = {
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "samples": len(arr),
        "at_msgs_per_s": rate,
    }
    for kind, values in by_kind.items():
        if values:
            report[f"closed_by_{kind}"] = {
                "p50": float(np.percentile(values, 50)),
                "p99": float(np.percentile(values, 99)),
                "samples": len(values),
            }
    internal = [s["latency_ms"] for _, s in received if "latency_ms" in s]
    report["worker_internal_p99"] = float(np.percentile(internal, 99)) if internal else None
    return report


# a signal as the worker emits it: the sink benches write copies of it
SIGNAL_TEMPLATE: dict[str, Any] = {
    "schema_version": 1,
    "symbol": "BTCUSDT",
    "signal_type": "hold",
    "signal_strength": "hold",
    "confidence_score": 0.1,
    "ml_confidence": 0.2,
    "ml_prediction": "flat",
    "risk_level": "low",
    "market_regime": "ranging",
    "entry_price": 60000.0,
    "recommended_leverage": None,
    "position_size_usdt": None,
    "quantity": None,
    "stop_loss_price": None,
    "take_profit_price": None,
    "risk_reward_ratio": None,
    "liquidation_price": None,
    "risk_score": 20.0,
    "liquidation_risk": 0.0,
    "portfolio_impact": 0.0,
    "volatility_score": 0.2,
    "liquidity_score": 0.8,
    "model_contributions": {"lightgbm": {"p_up": 0.5, "weight": 1.0}},
    "model_version": "bench",
    "latency_ms": 1.0,
    "metadata": {"p_up": 0.5},
}


@contextlib.contextmanager
def scratch_schema(url: str) -> Iterator[str]:
    """A schema holding an empty copy of actionable_trade_signals (its indexes and keys included), dropped
    afterwards; yields a database URL whose search path finds that copy first."""
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.actionable_trade_signals (LIKE public.actionable_trade_signals INCLUDING ALL)"
        )
    options = urllib.parse.urlencode({"options": f"-c search_path={schema}"}, quote_via=urllib.parse.quote)
    try:
        yield url + ("&" if "?" in url else "?") + options
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def sink_bench(url: str, rows: int) -> dict[str, float]:
    """Rows per second into actionable_trade_signals: batched statements against one INSERT per row, in a
    scratch schema (`scratch_schema`): the audit trail never sees the bench's rows, and every run starts from
    the same empty table."""
    from streams.sink.writer import SINK_BATCH, Sink, insert_sql, signal_row

    def signals(n: int) -> list[dict]:
        base = 1_700_000_000_000
        return [
            {
                **SIGNAL_TEMPLATE,
                "signal_id": str(uuid.uuid4()),
                "bar_close_time": base + i * 60_000,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime((base + i * 60_000) / 1000)),
            }
            for i in range(n)
        ]

    async def batched(url: str, batch: list[dict]) -> float:
        sink = Sink(url)
        await sink.open()
        start = time.perf_counter()
        for i in range(0, len(batch), SINK_BATCH):
            await sink.write("actionable_trade_signals", [signal_row(s) for s in batch[i : i + SINK_BATCH]])
        elapsed = time.perf_counter() - start
        await sink.close()
        return len(batch) / elapsed

    async def row_by_row(url: str, batch: list[dict]) -> float:
        import psycopg

        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            sql = insert_sql("actionable_trade_signals", 1)
            start = time.perf_counter()
            for s in batch:
                await conn.execute(sql, signal_row(s))
            return len(batch) / (time.perf_counter() - start)

    with scratch_schema(url) as scoped:
        fast = asyncio.run(batched(scoped, signals(rows)))
        slow = asyncio.run(row_by_row(scoped, signals(max(2000, rows // 10))))
    return {"batched": fast, "row_by_row": slow, "ratio": fast / slow}


WARM_MINUTES = 420  # klines before the measured feed: the features' longest window, with room


def warmed_worker(
    settings: Settings,
    model_dir: Path,
    home: Path,
    trades: list[tuple[bytes, bytes, int, int]],
    warm: list[tuple[bytes, bytes]] | None = None,
) -> tuple[dict[str, str], WorkerProcess, list[tuple[bytes, bytes]]]:
    """A worker with models whose symbols were warmed up on `warm`, by default the klines just before the first
    trade."""
    env = worker_env(settings, f"bench{uuid.uuid4().hex[:6]}-", model_dir, home)
    worker = start_worker(env, home)
    if warm is None:
        first_trade_ms = trades[0][3] - trades[0][3] % 60_000
        warm = warm_up_klines(WARM_MINUTES, first_trade_ms)
    asyncio.run(produce(client_options(settings), env["MLRISK_TOPIC_PREFIX"] + "market-data", warm))
    while metric(worker.port, "mlrisk_bars_closed_total") < len(warm):
        time.sleep(0.2)
    settled, decided = 0, -1.0
    while settled < 10:  # the signal stage is through the warm-up bars: its count holds still for 2 s
        time.sleep(0.2)
        now = metric(worker.port, "mlrisk_signals_total")
        settled, decided = (settled + 1, now) if now == decided else (0, now)
    return env, worker, warm


def ensure_models(model_dir: Path) -> Path:
    if not (model_dir / "CURRENT").exists():
        from models.training.train import train_cli

        train_cli(DATA, "BTCUSDT", model_dir, quick=True, progress=False)
    return model_dir


PARTS = ("throughput", "latency", "sink", "inference", "burst", "steady", "scale")
CPU_REFERENCE_ITERATIONS = 1_000_000


def cpu_reference_ns() -> float:
    """Nanoseconds an iteration of a fixed pure-Python loop takes: how fast this machine runs the interpreter, now.

    The burst, steady and risk figures are times, not same-run ratios, so they move with the machine: sampled
    at the start and after every part, this shows a machine slower than another, or one whose speed moves
    during the run (a shared host), beside them."""
    started = time.perf_counter()
    total = 0
    for i in range(CPU_REFERENCE_ITERATIONS):
        total += i
    return (time.perf_counter() - started) / CPU_REFERENCE_ITERATIONS * 1e9


def cpu_model() -> str:
    """The processor's name as the kernel reports it (empty where it does not)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def _reference_figures(samples: list[float]) -> dict[str, Any]:
    return {
        "samples": [round(v, 1) for v in samples],
        "min": min(samples),
        "median": float(np.median(samples)),
        "max": max(samples),
    }


def run(events: int, out: Path, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """Run the chosen parts of the bench (all by default), write `out` and print the table."""
    from bench import scale
    from bench.risk_bench import bench_decide_us
    from models.evaluate import bench_inference
    from models.registry import load_bundle
    from streams.sink.db import database_url, init_schema

    settings = Settings.from_env()
    url = database_url(settings)
    init_schema(url)
    model_dir = ensure_models(settings.model_dir)
    trades = real_trades(events)
    items = [(k, v) for k, v, _, _ in trades]
    home = settings.home / "bench"
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "events": len(items),
        "parts": list(parts),
    }
    print(f"bench: {len(items)} real trades; {', '.join(parts)}")
    reference = [min(cpu_reference_ns() for _ in range(3))]
    if "inference" in parts:  # the pure decision first, before any part of the bench has loaded the machine
        report["risk_us_per_decision"] = bench_decide_us()
    if "throughput" in parts:
        report["passthrough_msgs_per_s"] = asyncio.run(passthrough(client_options(settings), items))
        print(f"  passthrough {report['passthrough_msgs_per_s']:.0f} msg/s")
        report["passthrough_batched_msgs_per_s"] = asyncio.run(
            scale.passthrough_batched(client_options(settings), items)
        )
        print(f"  passthrough, batched {report['passthrough_batched_msgs_per_s']:.0f} msg/s")

        env = worker_env(settings, f"bench{uuid.uuid4().hex[:6]}-", None, home / "ingest")
        worker = start_worker(env, home / "ingest")
        try:
            report["ingest_msgs_per_s"] = stream_rate(settings, env, items, "mlrisk_events_in_total", len(items))
        finally:
            worker.stop()
        print(f"  ingest {report['ingest_msgs_per_s']:.0f} msg/s")

        env, worker, warm = warmed_worker(settings, model_dir, home / "pipeline", trades)
        try:
            report["pipeline_msgs_per_s"] = stream_rate(
                settings, env, items, "mlrisk_events_in_total", len(items) + len(warm)
            )
            report["worker_rss_mb"] = worker.rss_mb()
        finally:
            worker.stop()
        for stage in ("pipeline", "ingest"):
            report[f"{stage}_vs_passthrough"] = report[f"{stage}_msgs_per_s"] / report["passthrough_msgs_per_s"]
            report[f"{stage}_vs_passthrough_batched"] = (
                report[f"{stage}_msgs_per_s"] / report["passthrough_batched_msgs_per_s"]
            )
        print(f"  pipeline {report['pipeline_msgs_per_s']:.0f} msg/s, worker RSS {report['worker_rss_mb']:.0f} MB")

    reference.append(cpu_reference_ns())
    if "latency" in parts:
        warm, feed, closes = latency_feed(trades, WARM_MINUTES)
        env, worker, _ = warmed_worker(settings, model_dir, home / "latency", trades, warm)
        try:
            report["latency_ms"] = asyncio.run(latency_run(settings, env, feed, closes, 1000.0))
        finally:
            worker.stop()
        print(f"  latency {report['latency_ms']}")

    reference.append(cpu_reference_ns())
    if "sink" in parts:
        report["sink_rows_per_s"] = sink_bench(url, 20_000)
        print(f"  sink {report['sink_rows_per_s']}")
        report["sink_hypertable_vs_plain_rows_per_s"] = sink_hypertable_vs_plain(url, SIGNAL_TEMPLATE, 40_000)
        print(f"  sink on a hypertable vs plain {report['sink_hypertable_vs_plain_rows_per_s']}")
        report["performance_query_30d_ms"] = performance_query_aggregate_vs_raw(url)
        print(f"  performance query over 30 days {report['performance_query_30d_ms']}")
    if "inference" in parts:
        bundle = load_bundle(model_dir)
        report["inference_us_per_row"] = bench_inference(bundle)

    reference.append(cpu_reference_ns())
    if "burst" in parts:
        detail = scale.burst(settings, model_dir, home)
        report["burst"] = [{key: run[key] for key in BURST_KEYS} for run in detail["runs"]]
        report["burst_detail"] = detail
        # the same bursts with the signal stage in a process of its own (MLRISK_WORKER_STAGES=signals) and ingest
        # and the sink in another, as a deployment on one host of a few cores may run them
        apart = scale.burst(settings, model_dir, home / "apart", two_workers=False, stages_apart=True)
        report["burst_stages_apart"] = [{key: run[key] for key in BURST_KEYS} for run in apart["runs"]]
        report["burst_stages_apart_detail"] = apart
    reference.append(cpu_reference_ns())
    if "steady" in parts:
        report["steady_latency_ms"] = scale.steady(settings, model_dir, home)
        print(f"  steady {report['steady_latency_ms']}")
        report["steady_latency_ms_stages_apart"] = scale.steady(settings, model_dir, home / "apart", stages_apart=True)
        print(f"  steady, stages apart {report['steady_latency_ms_stages_apart']}")
    reference.append(cpu_reference_ns())
    if "scale" in parts:
        report["scale_200"] = scale.scale(settings, model_dir, home)
        print(f"  scale {report['scale_200']}")
    reference.append(cpu_reference_ns())
    report["cpu_reference_ns"] = _reference_figures(reference)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    _table(report)
    return report


BURST_KEYS = ("symbols", "p50_ms", "p99_ms", "boundaries", "compute_us_per_symbol_bar")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mlrisk bench: {report['events']} real trades, {report['machine']['cpus']} CPUs")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("vs baseline", justify="right")
    if "passthrough_msgs_per_s" in report:
        base = report["passthrough_msgs_per_s"]
        batched = report["passthrough_batched_msgs_per_s"]
        table.add_row("passthrough, batched (aiokafka getmany + batch produce), msg/s", f"{batched:,.0f}", "1.00")
        table.add_row("passthrough, awaiting each produce, msg/s", f"{base:,.0f}", f"{base / batched:.2f}")
        table.add_row(
            "ingest, msg/s (vs batched; vs per-message)",
            f"{report['ingest_msgs_per_s']:,.0f}",
            f"{report['ingest_vs_passthrough_batched']:.2f}; {report['ingest_vs_passthrough']:.2f}",
        )
        table.add_row(
            "pipeline, msg/s (vs batched; vs per-message)",
            f"{report['pipeline_msgs_per_s']:,.0f}",
            f"{report['pipeline_vs_passthrough_batched']:.2f}; {report['pipeline_vs_passthrough']:.2f}",
        )
    lat = report.get("latency_ms", {})
    if lat.get("samples"):
        table.add_row(
            f"latency p50 / p99 at {lat['at_msgs_per_s']:.0f} msg/s, ms ({lat['samples']} signals)",
            f"{lat['p50']:.1f} / {lat['p99']:.1f}",
            "",
        )
        for kind in ("trade", "kline"):
            part = lat.get(f"closed_by_{kind}")
            if part:
                table.add_row(
                    f"  bars closed by a {kind}, p50 / p99 ({part['samples']} signals)",
                    f"{part['p50']:.1f} / {part['p99']:.1f}",
                    "",
                )
    if "sink_rows_per_s" in report:
        sink = report["sink_rows_per_s"]
        table.add_row(
            "sink batched / row by row, rows/s",
            f"{sink['batched']:,.0f} / {sink['row_by_row']:,.0f}",
            f"{sink['ratio']:.1f}x",
        )
        hyper = report["sink_hypertable_vs_plain_rows_per_s"]
        for way in ("batched", "row_by_row"):
            table.add_row(
                f"sink on a hypertable / plain, {way.replace('_', ' ')}, rows/s",
                f"{hyper[f'hypertable_{way}']:,.0f} / {hyper[f'plain_{way}']:,.0f}",
                f"{hyper[f'{way}_ratio']:.2f}x",
            )
        query = report["performance_query_30d_ms"]
        table.add_row(
            f"performance query, 30 days ({query['rows']:,.0f} signals): aggregate / raw, ms",
            f"{query['aggregate_ms']:.1f} / {query['raw_ms']:.1f}",
            f"{query['speedup']:.1f}x faster",
        )
    if "inference_us_per_row" in report:
        for name, figures in report["inference_us_per_row"].items():
            table.add_row(
                f"{name} µs/row, batch 1 / 64",
                f"{figures['batch_1']:.0f} / {figures['batch_64']:.1f}",
                f"{figures['batch_1'] / figures['batch_64']:.1f}x",
            )
        table.add_row("risk decision, µs", f"{report['risk_us_per_decision']:.0f}", "")
    if "worker_rss_mb" in report:
        table.add_row("worker RSS, MB", f"{report['worker_rss_mb']:.0f}", "")
    for key, how in (("burst", ""), ("burst_stages_apart", ", stages apart (signals | ingest, sink)")):
        for run in report.get(key, []):
            compute = run["compute_us_per_symbol_bar"]
            table.add_row(
                f"burst of {run['symbols']} symbols{how}, p50 / p99 ms ({run['boundaries']} minutes)",
                f"{_ms(run['p50_ms'])} / {_ms(run['p99_ms'])}",
                "-" if compute is None else f"{compute:.0f} µs/symbol-bar",
            )
    two = report.get("burst_detail", {}).get("two_workers")
    if two:
        table.add_row(
            f"burst of {two['symbols']} symbols on two workers, p50 / p99 ms",
            f"{_ms(two['p50_ms'])} / {_ms(two['p99_ms'])}",
            f"missing {two['signals_missing']}, duplicated {two['signals_duplicated']}",
        )
    for key, how in (("steady_latency_ms", ""), ("steady_latency_ms_stages_apart", ", stages apart")):
        steady = report.get(key)
        if steady:
            table.add_row(
                f"steady{how}, {steady['symbols']} symbols at {steady['at_events_per_s']:.0f} events/s, "
                f"p50 / p99 ms ({steady['samples']} trade-closed bars)",
                f"{_ms(steady['p50'])} / {_ms(steady['p99'])}",
                "",
            )
    big = report.get("scale_200")
    if big:
        table.add_row(
            f"{big['symbols']} symbols at real trade pace ({big['events_per_s']:,.0f} events/s, "
            f"{big['seconds']:.0f} s): RSS MB / max lag s",
            f"{big['rss_mb']:.0f} / {big['max_lag_s']:.1f}",
            f"{big['mb_per_symbol']:.2f} MB/symbol",
        )
    ref = report.get("cpu_reference_ns")
    if ref:
        table.add_row(
            f"CPU reference: a pure-Python loop, ns an iteration, min / median / max ({len(ref['samples'])} samples)",
            f"{ref['min']:.0f} / {ref['median']:.0f} / {ref['max']:.0f}",
            report["machine"].get("cpu_model", ""),
        )
    Console().print(table)


def main(args: argparse.Namespace) -> int:
    only = tuple(args.only.split(",")) if getattr(args, "only", None) else PARTS
    unknown = sorted(set(only) - set(PARTS))
    if unknown:
        raise SystemExit(f"mlrisk bench --only: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    run(args.events, Path(args.out), only)
    return 0
