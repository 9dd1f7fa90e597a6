"""Scale figures of `mlrisk bench`: many symbols on one worker, measured on real data in the same run.

- passthrough_batched: the fastest copy the client library does on the same broker — `getmany` batches produced
  as one record batch per partition, not awaiting each message, flushed per batch — the throughput baseline;
- burst: N symbols close a minute at the same instant; from sending the first closing event to the arrival of
  the last of the N signals at a subscriber, over many minute boundaries, with the worker's own compute per
  symbol-bar (its `mlrisk_signal_stage_seconds_total` over the bars decided). Synthetic fan-out of real data:
  every symbol name replays a copy of BTCUSDT's real 1-minute klines (warmed up on the klines before), so the
  figures are those of N markets' load, not of N real markets; also with two workers in one group (every
  signal must arrive exactly once);
- steady: 50 symbol names, each following one of 12 feeds: a real BTCUSDT futures trade capture and another real
  capture (BTCUSDT's or ETHUSDT's) after it, moved to follow it, so that each name closes 11 to 16 bars on
  trades; thinned to every k-th trade so that together they offer 1,000 events/s; latency from sending the trade
  that closes a bar to the arrival of its signal;
- scale: 200 symbol names fed BTCUSDT's two longest captures back to back at their real pace for 10 minutes: the
  worker's resident memory, how far its count of accepted events fell behind the sending, and the memory per
  symbol.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import math
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streams.config import Settings
from streams.kafka_security import client_options
from streams.ops.probe import metric

BURST_COUNTS = (1, 10, 50, 100, 200)
BURST_BOUNDARIES = 20
BURST_KLINES_FROM = "2024-06-10"  # BTCUSDT's real klines from here on feed every symbol name of the burst
BURST_TIMEOUT_S = 60.0  # a burst whose signals have not all arrived by then counts as lost
STEADY_SYMBOLS = 50
STEADY_RATE = 1_000.0  # events/s offered across all symbols
# continuous real futures trade captures of 6 to 9 minutes (one split over two files at midnight is one capture)
BTC_CAPTURES = (
    ("btcusdt_20230404.dat.gz", "btcusdt_20230405.dat.gz"),
    ("btcusdt_20240718.gz", "btcusdt_20240719.gz"),
    ("btcusdt_20240808.gz",),
)
ETH_CAPTURES = (("ethusdt_20240718.gz", "ethusdt_20240719.gz"), ("ethusdt_20240808.gz",))
CAPTURES = BTC_CAPTURES[:2]  # the scale run's: BTCUSDT's two longest, back to back
# the steady run's: each BTCUSDT capture (warmed up on BTCUSDT's klines before it) followed by each other capture,
# so that the symbol names follow 12 different feeds whose minutes fall at different moments of the run
STEADY_CHAINS = tuple((a, b) for a in BTC_CAPTURES for b in BTC_CAPTURES + ETH_CAPTURES if b != a)
STEADY_SECONDS = 150.0
SCALE_SYMBOLS = 200
SCALE_SECONDS = 600.0
STAGE_SECONDS = "mlrisk_signal_stage_seconds_total"
STAGE_CPU_SECONDS = "mlrisk_signal_stage_cpu_seconds_total"
SIGNALS_TOTAL = "mlrisk_signals_total"


def symbol_names(count: int, prefix: str = "X") -> list[str]:
    """Synthetic symbol names, each the copy of a real stream (never a real market's name)."""
    return [f"{prefix}{i:03d}USDT" for i in range(count)]


async def copy_batched(producer: Any, batch: dict[Any, list[Any]], sink: str) -> int:
    """The batched copy: each partition's records go out as record batches (`create_batch` / `send_batch`), and
    the batch's deliveries are awaited once, not each message's."""
    deliveries, copied = [], 0
    for tp, records in batch.items():
        builder = producer.create_batch()
        for record in records:
            if builder.append(key=record.key, value=record.value, timestamp=None) is None:
                deliveries.append(await producer.send_batch(builder, sink, partition=tp.partition))
                builder = producer.create_batch()
                builder.append(key=record.key, value=record.value, timestamp=None)
            copied += 1
        deliveries.append(await producer.send_batch(builder, sink, partition=tp.partition))
    await asyncio.gather(*deliveries)
    return copied


async def passthrough_batched(kafka: dict[str, Any], items: list[tuple[bytes, bytes]]) -> float:
    """Baseline: copy every message between two topics as fast as the client allows; messages per second."""
    from bench.run import timed_copy

    return await timed_copy(kafka, items, copy_batched)


class Subscriber:
    """A consumer of the signals topic from its end: (arrival wall time, symbol, bar close) of each signal."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings, self.topic = settings, topic
        self.received: list[tuple[float, str, int]] = []
        self.signals: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self.consumer = AIOKafkaConsumer(
            self.topic, **client_options(self.settings), group_id=None, auto_offset_reset="latest"
        )
        await self.consumer.start()
        self._task = asyncio.create_task(self._listen())
        await asyncio.sleep(1)

    async def _listen(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=50)
            now = time.time()
            for records in batch.values():
                for record in records:
                    signal = orjson.loads(record.value)
                    self.received.append((now, signal["symbol"], signal["bar_close_time"]))
                    self.signals.append(signal)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with _suppress_cancel():
                await self._task
        await self.consumer.stop()


class _suppress_cancel:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is asyncio.CancelledError


def _percentiles(values_ms: Sequence[float]) -> dict[str, float | None]:
    if not values_ms:
        return {"p50_ms": None, "p99_ms": None}
    arr = np.asarray(values_ms)
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


class KlineFanOut:
    """Real BTCUSDT klines as the closed-kline messages of many symbol names, each name on its own cursor."""

    def __init__(self, minutes: int) -> None:
        from bench.run import DATA
        from models.bars import parse_iso_ms
        from models.data import load_bars

        start = parse_iso_ms(BURST_KLINES_FROM)
        self.frame = load_bars(DATA, "BTCUSDT", start, start + minutes * 60_000)
        self.template = [orjson.loads(_kline(self.frame, i)) for i in range(len(self.frame))]
        self.cursor: dict[str, int] = {}

    def next(self, symbol: str) -> tuple[bytes, bytes, int]:
        """(key, message, bar close time) of the symbol's next minute."""
        i = self.cursor.get(symbol, 0)
        self.cursor[symbol] = i + 1
        message = self.template[i]
        message = {**message, "s": symbol, "k": {**message["k"], "s": symbol}}
        return symbol.encode(), orjson.dumps(message), int(message["k"]["T"])


def _kline(frame: Any, i: int) -> bytes:
    from streams.ops.replay import kline_message

    return kline_message(frame, i)


async def _send_now(producer: Any, topic: str, items: list[tuple[bytes, bytes]]) -> float:
    """Hand every message to the producer at once; the wall time the first one was handed over."""
    started = time.time()
    for key, value in items:
        await producer.send(topic, value, key=key)
    return started


async def _bursts(
    settings: Settings,
    env: dict[str, str],
    feed: KlineFanOut,
    symbols: list[str],
    boundaries: int,
    workers: list[Any],
    settle: int = 1,
) -> dict[str, Any]:
    """`boundaries` minute boundaries of all `symbols` at once; latency of each burst's last signal.

    The first `settle` bursts are not timed (the worker may still be writing out what came before); every
    signal of every burst counts for the exactly-once check.
    """
    from aiokafka import AIOKafkaProducer

    prefix = env["MLRISK_TOPIC_PREFIX"]
    subscriber = Subscriber(settings, prefix + "signals")
    await subscriber.start()
    producer = AIOKafkaProducer(**client_options(settings), linger_ms=1, acks=1)
    await producer.start()
    before = [_stage_figures(w.port) for w in workers]
    latencies: list[float] = []
    expected: set[tuple[str, int]] = set()
    # the bench's own heap (the feeds of every symbol) out of its collector while it times: a full collection of it
    # took 30-40 ms here, and one that met a boundary would delay the subscriber's clock, not the worker
    gc.collect()
    gc.freeze()
    try:
        for number in range(settle + boundaries):
            burst = [feed.next(s) for s in symbols]
            wanted = {(s, close) for s, (_, _, close) in zip(symbols, burst, strict=True)}
            expected |= wanted
            seen = len(subscriber.received)
            sent_at = await _send_now(producer, prefix + "market-data", [(k, v) for k, v, _ in burst])
            deadline = time.time() + BURST_TIMEOUT_S
            last = None
            while wanted and time.time() < deadline:
                await asyncio.sleep(0.002)
                for at, symbol, close in subscriber.received[seen:]:
                    if (symbol, close) in wanted:
                        wanted.discard((symbol, close))
                        last = at
                seen = len(subscriber.received)
            if not wanted and last is not None and number >= settle:
                latencies.append((last - sent_at) * 1000)
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)  # late duplicates, if any, arrive
    finally:
        gc.unfreeze()
        await producer.stop()
        await subscriber.stop()
    after = [_stage_figures(w.port) for w in workers]
    wall_s, cpu_s, decided, calls = (sum(a[i] - b[i] for a, b in zip(after, before, strict=True)) for i in range(4))
    counts: dict[tuple[str, int], int] = {}
    for _, symbol, close in subscriber.received:
        if (symbol, close) in expected:
            counts[(symbol, close)] = counts.get((symbol, close), 0) + 1
    return {
        "symbols": len(symbols),
        **_percentiles(latencies),
        "boundaries": len(latencies),
        "latencies_ms": [round(v, 1) for v in latencies],
        "compute_us_per_symbol_bar": cpu_s / decided * 1e6 if decided else None,
        "stage_wall_us_per_symbol_bar": wall_s / decided * 1e6 if decided else None,
        "inference_calls_per_burst": calls / (settle + boundaries),
        "signals_expected": len(expected),
        "signals_missing": len(expected) - len(counts),
        "signals_duplicated": sum(n - 1 for n in counts.values()),
    }


def _settle_group(
    settings: Settings,
    env: dict[str, str],
    feed: KlineFanOut,
    symbols: list[str],
    workers: list[Any],
    within_s: float = 240.0,
) -> None:
    """Untimed bursts until the group has rebalanced: every worker decides bars and a burst is back in 2 s."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        run = asyncio.run(_bursts(settings, env, feed, symbols, 1, workers, settle=0))
        if (
            run["p99_ms"] is not None
            and run["p99_ms"] < 2_000
            and all(metric(w.port, SIGNALS_TOTAL) > 0 for w in workers)
        ):
            return


def _stage_figures(port: int) -> tuple[float, float, float, float]:
    """The signal stage's wall seconds, CPU seconds, bars decided and inference calls so far."""
    return (
        metric(port, STAGE_SECONDS),
        metric(port, STAGE_CPU_SECONDS),
        metric(port, SIGNALS_TOTAL),
        metric(port, "mlrisk_inference_seconds_count"),
    )


def _warm(
    settings: Settings,
    env: dict[str, str],
    feed: KlineFanOut,
    symbols: list[str],
    minutes: int,
    workers: list[Any],
    beside: Sequence[Any] = (),
) -> None:
    """Every symbol through `minutes` real klines, interleaved minute by minute; back when the workers (and the
    processes `beside` them, which may be the ones that ingest) are idle."""
    from bench.run import produce

    items = [(k, v) for _ in range(minutes) for k, v, _ in (feed.next(s) for s in symbols)]
    asyncio.run(produce(client_options(settings), env["MLRISK_TOPIC_PREFIX"] + "market-data", items))
    _wait_idle([*workers, *beside], len(items))


def _wait_idle(workers: list[Any], bars: int) -> None:
    """Back once the workers closed `bars` more bars and their signal stage is through them (its time spent
    and its count of bars decided hold still for 2 s: warm-up bars decide nothing but still take time). Each
    figure is summed over `workers`: a process without the stage that makes it reports none."""
    closed = "mlrisk_bars_closed_total"
    while sum(metric(w.port, closed) for w in workers) < bars:
        time.sleep(0.2)
    settled, last = 0, (-1.0, -1.0)
    while settled < 10:
        time.sleep(0.2)
        now = (sum(metric(w.port, SIGNALS_TOTAL) for w in workers), sum(metric(w.port, STAGE_SECONDS) for w in workers))
        settled, last = (settled + 1, now) if now == last else (0, now)


def _stage_processes(env: dict[str, str], home: Path, stages_apart: bool) -> tuple[list[Any], str]:
    """The processes started beside the signal stage's, and the layout's name. With `stages_apart`, one of ingest
    and the sink (under `home`-io) is started, and `env` is set to the signal stage alone; otherwise none, and
    the worker started from `env` runs every stage."""
    if not stages_apart:
        return [], "ingest,signals,sink"
    from bench.run import free_port, start_worker

    io_home = home.with_name(f"{home.name}-io")
    io_env = {**env, "MLRISK_WEB_PORT": str(free_port()), "MLRISK_HOME": str(io_home)}
    beside = [start_worker({**io_env, "MLRISK_WORKER_STAGES": "ingest,sink"}, io_home)]
    env["MLRISK_WORKER_STAGES"] = "signals"
    return beside, "signals | ingest,sink"


def _start_beside(beside: list[Any], env: dict[str, str], home: Path) -> Any:
    """The worker started from `env` next to the processes `beside` it; if it fails to start, they are stopped
    before the failure goes on."""
    from bench.run import start_worker

    try:
        return start_worker(env, home)
    except BaseException:
        for process in beside:
            process.stop()
        raise


def burst(
    settings: Settings,
    model_dir: Path,
    home: Path,
    counts: Sequence[int] = BURST_COUNTS,
    boundaries: int = BURST_BOUNDARIES,
    two_workers: bool = True,
    stages_apart: bool = False,
) -> dict[str, Any]:
    """The minute-boundary burst for each N in `counts` on one worker, then the largest N on two workers.

    With `stages_apart`, the worker's stages run as a deployment may split them (`MLRISK_WORKER_STAGES`): the
    signal stage in a process of its own, ingest and the sink together in another; the second "worker" of
    `two_workers` is then a second signal-stage process."""
    from bench.run import cpu_reference_ns, free_port, start_worker, worker_env
    from models.features import WARMUP_BARS
    from models.registry import load_bundle

    largest = max(counts)
    symbols = symbol_names(largest)
    warm_minutes = WARMUP_BARS + load_bundle(model_dir).window + 5
    minutes_needed = warm_minutes + (boundaries + 1) * (len(counts) + (1 if two_workers else 0)) + 120
    feed = KlineFanOut(minutes_needed)
    env = worker_env(settings, f"bench{uuid.uuid4().hex[:6]}-", model_dir, home / "burst")
    env["MLRISK_MAX_SYMBOLS"] = str(max(largest, 300))
    beside, stages = _stage_processes(env, home / "burst", stages_apart)
    first = _start_beside(beside, env, home / "burst")
    workers = [first]
    report: dict[str, Any] = {"fan_out_of": "BTCUSDT 1-minute klines", "stages": stages, "runs": []}
    try:
        started = time.monotonic()
        _warm(settings, env, feed, symbols, warm_minutes, workers, beside)
        report["warm_up_s"] = time.monotonic() - started
        report["warm_up_bars"] = warm_minutes * largest
        for n in counts:
            run = asyncio.run(_bursts(settings, env, feed, symbols[:n], boundaries, workers))
            run["cpu_reference_ns"] = cpu_reference_ns()  # the machine's speed right after (bench.run)
            report["runs"].append(run)
            print(
                f"  burst N={n}{' (stages apart)' if stages_apart else ''}: p50 {run['p50_ms']} ms, "
                f"p99 {run['p99_ms']} ms, {run['compute_us_per_symbol_bar']} µs/symbol-bar"
            )
        report["rss_mb"] = first.rss_mb() + sum(w.rss_mb() for w in beside)
        if two_workers:
            second_env = {**env, "MLRISK_WEB_PORT": str(free_port()), "MLRISK_HOME": str(home / "burst-2")}
            workers.append(start_worker(second_env, home / "burst-2"))
            _settle_group(settings, env, feed, symbols, workers)
            run = asyncio.run(_bursts(settings, env, feed, symbols, boundaries, workers))
            report["two_workers"] = run
            print(
                f"  burst N={largest}, two workers: p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, "
                f"missing {run['signals_missing']}, duplicated {run['signals_duplicated']}"
            )
    finally:
        for worker in workers + beside:
            worker.stop()
    return report


def _capture_trades(names: Sequence[str]) -> list[tuple[bytes, int, int]]:
    """(raw trade message, event ms, trade ms) of one continuous real capture, in event-time order."""
    from bench.run import DATA

    rows = []
    for name in names:
        with gzip.open(DATA / "binance-futures-ws" / name, "rb") as handle:
            for line in handle:
                payload = line.split(b" ", 1)[1].strip()
                if b'"e":"trade"' not in payload:
                    continue
                data = orjson.loads(payload)["data"]
                rows.append((payload, int(data["E"]), int(data["T"])))
    rows.sort(key=lambda r: r[1])
    return rows


def _back_to_back(captures: Sequence[Sequence[str]]) -> list[tuple[bytes, int, int]]:
    """The captures' trades one after the other, each capture moved to follow the one before it: in time, to open
    the minute after it closed (trade and event times alike), in price, scaled to open at its last price, and in
    trade ids, to go on from its last id (ingest refuses an id implausibly far ahead). The trades' order, spacing,
    sizes and returns are the real ones; only the level, the date and the numbering are moved."""
    rows: list[tuple[bytes, int, int]] = []
    last: dict[str, Any] = {}
    for names in captures:
        trades = _capture_trades(names)
        shift_ms, ids, scale = 0, 0, 1.0
        if rows:
            first = orjson.loads(trades[0][0])["data"]
            shift_ms = rows[-1][2] - rows[-1][2] % 60_000 + 60_000 - (trades[0][2] - trades[0][2] % 60_000)
            ids = int(last["t"]) + 1 - int(first["t"])
            scale = float(last["p"]) / float(first["p"])
        for payload, event_ms, trade_ms in trades:
            rows.append((_moved(payload, shift_ms, ids, scale), event_ms + shift_ms, trade_ms + shift_ms))
        last = orjson.loads(rows[-1][0])["data"]
    return rows


def _moved(payload: bytes, shift_ms: int, ids: int, scale: float) -> bytes:
    if shift_ms == ids == 0 and scale == 1.0:
        return payload
    message = orjson.loads(payload)
    data = message["data"]
    data["E"] += shift_ms
    data["T"] += shift_ms
    data["t"] += ids
    data["p"] = f"{float(data['p']) * scale:.2f}"
    return orjson.dumps(message)


def _renamed(payload: bytes, symbol: str) -> bytes:
    message = orjson.loads(payload)
    data = message["data"]
    data["s"] = symbol
    message["stream"] = symbol.lower() + "@trade"
    return orjson.dumps(message)


def _warm_klines(symbol: str, before_ms: int, minutes: int) -> list[tuple[bytes, bytes]]:
    from bench.run import DATA
    from models.data import load_bars

    frame = load_bars(DATA, "BTCUSDT", before_ms - minutes * 60_000, before_ms)
    out = []
    for i in range(len(frame)):
        message = orjson.loads(_kline(frame, i))
        message["s"] = symbol
        message["k"]["s"] = symbol
        out.append((symbol.encode(), orjson.dumps(message)))
    return out


def steady(
    settings: Settings,
    model_dir: Path,
    home: Path,
    symbols: int = STEADY_SYMBOLS,
    rate: float = STEADY_RATE,
    seconds: float = STEADY_SECONDS,
    stages_apart: bool = False,
) -> dict[str, Any]:
    """Latency of trade-closed bars on a mixed real feed of `symbols` names at `rate` events/s; with
    `stages_apart`, the signal stage in a process of its own and ingest and the sink in another (as in `burst`)."""
    from bench.run import produce, worker_env
    from models.features import WARMUP_BARS
    from models.registry import load_bundle

    chains = [_back_to_back(chain) for chain in STEADY_CHAINS]
    names = symbol_names(symbols, "S")
    per_symbol = int(rate * seconds / symbols)
    warm_minutes = WARMUP_BARS + load_bundle(model_dir).window + 5
    lateness = settings.allowed_lateness_ms
    streams: list[list[tuple[bytes, bytes, int]]] = []
    warm: list[tuple[bytes, bytes]] = []
    thinning: list[int] = []
    for i, symbol in enumerate(names):
        capture = chains[i % len(chains)]
        step = max(1, math.ceil(len(capture) / per_symbol))  # every step-th real trade: the capture fits the run
        thinning.append(step)
        trades = capture[(i // len(chains)) % step :: step]  # copies of one feed keep different real trades
        streams.append([(symbol.encode(), _renamed(p, symbol), event_ms) for p, event_ms, _ in trades])
        first_minute = trades[0][2] - trades[0][2] % 60_000
        warm += _warm_klines(symbol, first_minute, warm_minutes)
    # one feed, in event-time order within each symbol, each symbol's stream spread evenly over the run
    placed = [
        ((k + 0.5) / len(stream), key, value, names[j], event_ms)
        for j, stream in enumerate(streams)
        for k, (key, value, event_ms) in enumerate(stream)
    ]
    placed.sort(key=lambda item: item[0])
    feed = [(key, value, symbol, event_ms) for _, key, value, symbol, event_ms in placed]
    env = worker_env(settings, f"bench{uuid.uuid4().hex[:6]}-", model_dir, home / "steady")
    beside, stages = _stage_processes(env, home / "steady", stages_apart)
    worker = _start_beside(beside, env, home / "steady")
    try:
        asyncio.run(produce(client_options(settings), env["MLRISK_TOPIC_PREFIX"] + "market-data", warm))
        _wait_idle([worker, *beside], len(warm))
        result = asyncio.run(_steady_run(settings, env, feed, rate, lateness))
        result["rss_mb"] = worker.rss_mb() + sum(w.rss_mb() for w in beside)
    finally:
        for process in (worker, *beside):
            process.stop()
    result.update(
        stages=stages,
        symbols=symbols,
        at_events_per_s=rate,
        seconds=seconds,
        trades_thinned_to_every=sorted(set(thinning)),
        feeds=[[list(c) for c in chain] for chain in STEADY_CHAINS],
    )
    return result


async def _steady_run(
    settings: Settings, env: dict[str, str], feed: list[tuple[bytes, bytes, str, int]], rate: float, lateness: int
) -> dict[str, Any]:
    from bench.run import produce

    prefix = env["MLRISK_TOPIC_PREFIX"]
    subscriber = Subscriber(settings, prefix + "signals")
    await subscriber.start()
    # the bench's own heap (the feed, what it sends) out of its collector while it times, as in the bursts: full
    # collections of it took 60-80 ms every 10-20 s of this part, and a signal that arrived during one was timed
    # that much late
    items = [(key, value) for key, value, _, _ in feed]
    gc.collect()
    gc.freeze()
    try:
        sent_at = await produce(client_options(settings), prefix + "market-data", items, rate)
        await asyncio.sleep(15)  # the last minutes close on the quiet-symbol flush
    finally:
        gc.unfreeze()
        await subscriber.stop()
    by_symbol: dict[str, list[tuple[int, float]]] = {}
    for (_, _, symbol, event_ms), at in zip(feed, sent_at, strict=True):
        by_symbol.setdefault(symbol, []).append((event_ms, at))
    first_ms = {symbol: events[0][0] for symbol, events in by_symbol.items()}
    latencies = []
    for got_at, symbol, close_ms in subscriber.received:
        events = by_symbol.get(symbol)
        if not events or close_ms < first_ms[symbol]:  # a warm-up bar
            continue
        closing = next((at for event_ms, at in events if event_ms >= close_ms + 1 + lateness), None)
        if closing is not None:  # else the quiet-symbol flush closed it, not a trade
            latencies.append((got_at - closing) * 1000)
    received = len(subscriber.received)
    if not latencies:
        return {"p50": None, "p99": None, "samples": 0, "signals_received": received}
    arr = np.asarray(latencies)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "samples": len(arr),
        "signals_received": received,
    }


def scale(
    settings: Settings, model_dir: Path, home: Path, symbols: int = SCALE_SYMBOLS, seconds: float = SCALE_SECONDS
) -> dict[str, Any]:
    """`symbols` names, each a copy of real trade captures at their real pace: RSS, lag and memory per symbol."""
    from bench.run import produce, start_worker, worker_env
    from models.features import WARMUP_BARS
    from models.registry import load_bundle

    capture = _back_to_back(CAPTURES)
    names = symbol_names(symbols, "R")
    warm_minutes = WARMUP_BARS + load_bundle(model_dir).window + 5
    start_ms = capture[0][1]
    in_window = [t for t in capture if t[1] < start_ms + seconds * 1000]
    first_minute = capture[0][2] - capture[0][2] % 60_000
    rate = len(in_window) / seconds * symbols
    feed = [(s.encode(), _renamed(p, s)) for p, _, _ in in_window for s in names]
    env = worker_env(settings, f"bench{uuid.uuid4().hex[:6]}-", model_dir, home / "scale")
    env["MLRISK_MAX_SYMBOLS"] = str(max(symbols, 300))
    worker = start_worker(env, home / "scale")
    try:
        idle_mb = worker.rss_mb()
        warm = [item for s in names for item in _warm_klines(s, first_minute, warm_minutes)]
        asyncio.run(produce(client_options(settings), env["MLRISK_TOPIC_PREFIX"] + "market-data", warm))
        _wait_idle([worker], len(warm))
        accepted_before = metric(worker.port, "mlrisk_events_in_total")
        lag = asyncio.run(_lag_run(settings, env, worker, feed, rate, accepted_before))
        rss = worker.rss_mb()
    finally:
        worker.stop()
    return {
        "rss_mb": rss,
        "max_lag_s": lag,
        "mb_per_symbol": (rss - idle_mb) / symbols,
        "idle_rss_mb": idle_mb,
        "symbols": symbols,
        "seconds": seconds,
        "events_per_s": rate,
        "captures": [list(c) for c in CAPTURES],
    }


async def _lag_run(
    settings: Settings,
    env: dict[str, str],
    worker: Any,
    feed: list[tuple[bytes, bytes]],
    rate: float,
    accepted_before: float,
) -> float:
    """Offer the feed at `rate`; the largest delay between sending a message and the worker accepting it."""
    from bench.run import produce

    sender = asyncio.create_task(
        produce(client_options(settings), env["MLRISK_TOPIC_PREFIX"] + "market-data", feed, rate)
    )
    started = time.time()
    worst = 0.0
    while True:
        await asyncio.sleep(1.0)
        accepted = int(await asyncio.to_thread(metric, worker.port, "mlrisk_events_in_total") - accepted_before)
        now = time.time()
        offered = min(len(feed), int((now - started) * rate))
        if accepted < offered:  # the oldest message not yet accepted was sent at started + accepted / rate
            worst = max(worst, now - (started + accepted / rate))
        if sender.done() and accepted >= len(feed):
            break
        if sender.done() and now - started > len(feed) / rate + 120:
            worst = max(worst, now - (started + accepted / rate))
            break
    await sender
    return worst
