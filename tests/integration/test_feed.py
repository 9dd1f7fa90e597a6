"""`mlrisk feed` against a local server that plays real Binance captures with faults, publishing to the real broker.

For each venue: connections dropped mid-stream (one drop long enough to need back-fill), a server-initiated close,
a silent connection, a withheld depth diff, 429 answers, rotation with overlap; and Kafka unavailable for 20 s (a
broker of the test's own, frozen). Every trade of the capture must reach `market-data` exactly once and in id
order, and the book that the published snapshots and diffs give after every resync must equal the one rebuilt
offline from the capture.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from models.bars import Bar
from streams.config import Settings
from streams.feed.service import FeedService
from streams.feed.venues import VENUES
from streams.ingest.bars import BarBuilder
from streams.ingest.book import OrderBook
from streams.ingest.events import DepthSnapshot, DepthUpdate, parse_event
from streams.ingest.rules import Ingest
from streams.metrics import REGISTRY
from streams.ops.replay import collect, merged
from tests.integration.conftest import REPO_ROOT, consume_all, free_port
from tests.integration.fake_binance import Capture, FakeBinance, ServerBook

pytestmark = pytest.mark.integration

SPEED = 10.0
NOW_MS = 4_000_000_000_000  # the captures are from 2024; future-time checks are not under test here


def metric(name: str, **labels: str) -> float:
    """The sum over the samples of `name` whose labels include `labels`."""
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def feed_settings(topic_prefix: str, address: str, **overrides: str) -> Settings:
    env = {
        "MLRISK_TOPIC_PREFIX": topic_prefix,
        "MLRISK_PARTITIONS": "2",
        "MLRISK_BINANCE_WS_URL": f"ws://{address}",
        "MLRISK_BINANCE_REST_URL": f"http://{address}",
        "MLRISK_FEED_SILENCE_S": "1.0",
        **overrides,
    }
    return Settings.from_env(env)


def offline_book(capture: Capture, symbol: str, futures: bool, last_update_id: int) -> dict[str, dict[float, float]]:
    """The book from the capture's snapshot and every captured diff up to `last_update_id`."""
    book = ServerBook(futures, capture.snapshots[symbol])
    for line in capture.lines:
        if line.symbol == symbol and line.kind == "depth" and line.data["u"] <= last_update_id:
            book.apply(line.data)
    assert book.last_update_id == last_update_id, "the published book ends on an id the capture does not have"
    return {
        "bids": {float(p): float(q) for p, q in book.bids.items()},
        "asks": {float(p): float(q) for p, q in book.asks.items()},
    }


def check_books(capture: Capture, futures: bool, events: list[Any], symbol: str) -> tuple[int, int]:
    """Follow the published depth as the worker does; compare with offline right after each snapshot, at the end
    of each snapshot's run when still in sync, and at the end. Returns (comparisons, snapshots)."""
    book = OrderBook(symbol)
    compared = snapshots = 0

    def compare() -> None:
        nonlocal compared
        assert book.last_update_id is not None
        expected = offline_book(capture, symbol, futures, book.last_update_id)
        assert book.bids == expected["bids"] and book.asks == expected["asks"]
        compared += 1

    for event in events:
        if isinstance(event, DepthSnapshot) and book.synced:
            compare()  # the end of the previous snapshot's run
        book.apply(event)
        if isinstance(event, DepthSnapshot):
            snapshots += 1
            assert book.synced, "a published snapshot does not bridge the published diffs"
            compare()  # right after the resync
    assert book.synced, "the published depth ends out of sync"
    compare()
    return compared, snapshots


async def run_scenario(
    capture: Capture,
    venue_name: str,
    topic_prefix: str,
    kinds: tuple[str, ...],
    faults: Callable[[FakeBinance], Awaitable[None]],
    brokers: str = "localhost:9092",
    **settings_overrides: str,
) -> tuple[FeedService, list[Any], dict[str, float]]:
    venue = VENUES[venue_name]
    server = FakeBinance(capture, venue.futures, SPEED)
    address = await server.start()
    settings = feed_settings(topic_prefix, address, MLRISK_KAFKA_BROKERS=brokers, **settings_overrides)
    symbols = sorted(capture.snapshots)
    names = (
        "mlrisk_feed_reconnects_total",
        "mlrisk_feed_backfilled_trades_total",
        "mlrisk_feed_resyncs_total",
        "mlrisk_feed_duplicates_total",
        "mlrisk_feed_rest_limited_total",
        "mlrisk_feed_published_total",
        "mlrisk_feed_unfilled_gaps_total",
        "mlrisk_feed_buffer_overflows_total",
        "mlrisk_feed_publish_failures_total",
    )
    causes = ("closed", "error", "silent", "rotate", "overflow")
    before = {n: metric(n) for n in names} | {c: metric("mlrisk_feed_reconnects_total", cause=c) for c in causes}
    service = FeedService(settings, venue, symbols, kinds)
    await service.start()
    try:
        while not all(c.connected for c in service.connections):
            await asyncio.sleep(0.01)
        server.play()
        await faults(server)
        await server.finished.wait()
        last_trade = {
            s: max(line.data["t"] for line in capture.lines if line.symbol == s and line.kind == "trade")
            for s in symbols
        }
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            service.router.states[s].last_ids.get("trade") != last_trade[s]
            or (service.router.states[s].book is not None and not service.router.states[s].book.synced)
            for s in symbols
        ):
            await asyncio.sleep(0.1)
    finally:
        await service.stop()
        await server.stop()
    after = {n: metric(n) for n in names} | {c: metric("mlrisk_feed_reconnects_total", cause=c) for c in causes}
    delta = {k: after[k] - before[k] for k in after}
    published = int(delta["mlrisk_feed_published_total"] - delta["mlrisk_feed_unfilled_gaps_total"])
    records = await consume_all(settings.market_data_topic, published, timeout_s=60, brokers=brokers)
    return service, records, delta


def check_trades(capture: Capture, records: list[Any]) -> int:
    """Every captured trade exactly once, in id order per symbol, with the captured price, quantity, time, side."""
    captured: dict[str, dict[int, dict[str, Any]]] = {}
    for line in capture.lines:
        if line.kind == "trade":
            captured.setdefault(line.symbol, {})[line.data["t"]] = line.data
    published: dict[str, list[dict[str, Any]]] = {}
    backfilled = 0
    for record in records:
        message = orjson.loads(record.value)
        data = message.get("data", message)
        if data.get("e") == "trade":
            assert record.key.decode() == data["s"]
            published.setdefault(data["s"], []).append(data)
            backfilled += bool(message.get("backfill"))
    assert set(published) == set(captured)
    for symbol, trades in published.items():
        ids = [t["t"] for t in trades]
        assert ids == sorted(captured[symbol]), f"{symbol}: trades missing, repeated or out of order"
        for trade in trades:
            original = captured[symbol][trade["t"]]
            assert (trade["p"], trade["q"], trade["T"], trade["m"]) == (
                original["p"],
                original["q"],
                original["T"],
                original["m"],
            )
    return backfilled


def worker_bars(messages: Iterable[tuple[bytes, bytes]]) -> dict[tuple[str, int], Bar]:
    """The bars the worker's ingest closes from (key, value) messages in publish order."""
    ingest = Ingest(BarBuilder(3_000), {}, 3_600_000, book_factory=OrderBook)
    bars: dict[tuple[str, int], Bar] = {}
    for key, value in messages:
        result = ingest.handle(value, key, "market-data", 0, 0, NOW_MS)
        assert result.dead_letter is None, result.dead_letter
        bars.update(((bar.symbol, bar.open_time), bar) for bar in result.bars)
    return bars


def check_bars_equal_replay(capture: Capture, folder: Path, records: list[Any]) -> int:
    """Bars from the fed stream equal those from `mlrisk replay` of the same capture (its minutes inside the
    window: the window's edges cut the first and last minutes differently in receive and exchange time)."""
    fed = worker_bars((record.key, record.value) for record in records)
    trades = [line.data for line in capture.lines if line.kind == "trade"]
    start_ms, end_ms = min(t["E"] for t in trades), max(t["E"] for t in trades) + 1
    symbols = sorted(capture.snapshots)
    replayed = worker_bars(
        (m.symbol.encode(), m.value) for m in merged(collect(folder, symbols, start_ms, end_ms, "captures"))
    )
    compared = 0
    for symbol in symbols:
        minutes = sorted(minute for s, minute in fed if s == symbol)
        inner = minutes[1:]  # the first minute starts inside the window
        assert inner, f"{symbol}: no full minute fed"
        for minute in inner:
            assert fed[(symbol, minute)] == replayed[(symbol, minute)], (symbol, minute)
            compared += 1
    return compared


def depth_events(records: list[Any], symbol: str) -> list[Any]:
    events = []
    for record in records:
        if record.key.decode() != symbol:
            continue
        event = parse_event(record.value, NOW_MS)
        if isinstance(event, DepthSnapshot | DepthUpdate):
            events.append(event)
    return events


def test_usdm_feed_survives_drops_close_silence_and_a_depth_gap(data_dir: Path, kafka: str, topic_prefix: str) -> None:
    folder = data_dir / "binance-futures-ws"
    files = [folder / f"{s}_{d}.gz" for s in ("btcusdt", "ethusdt") for d in ("20240718", "20240719")]
    capture = Capture.load(files, futures=True, duration_s=150)

    async def faults(server: FakeBinance) -> None:
        await server.wait_played(0.12)
        await server.drop(refuse_s=0.2)  # a short cut
        await server.wait_played(0.25)
        server.skip_depth("BTCUSDT")  # a missing depth update
        await server.wait_played(0.35)
        await server.drop(refuse_s=1.5)  # 15 s of exchange time lost: back-fill
        await server.wait_played(0.5)
        await server.wait_clients()
        await server.close_all()  # as at the 24-hour limit
        await server.wait_played(0.62)
        await server.wait_clients()
        server.silence()  # open but mute: the feed must notice
        await server.wait_played(0.8)
        await server.wait_clients()
        server.limit_next = 2  # the back-fill after this cut meets 429s with Retry-After
        await server.drop(refuse_s=0.5)

    service, records, delta = asyncio.run(
        run_scenario(capture, "binance-usdm", topic_prefix, ("trade", "bookTicker", "depth"), faults)
    )
    backfilled = check_trades(capture, records)
    assert backfilled == delta["mlrisk_feed_backfilled_trades_total"] > 100
    assert delta["mlrisk_feed_unfilled_gaps_total"] == 0
    assert check_bars_equal_replay(capture, folder, records) >= 2
    assert delta["closed"] >= 1 and delta["error"] + delta["closed"] >= 4 and delta["silent"] >= 1
    assert delta["mlrisk_feed_rest_limited_total"] >= 2
    for symbol in ("BTCUSDT", "ETHUSDT"):
        compared, snapshots = check_books(capture, True, depth_events(records, symbol), symbol)
        # the first book, then at least the long cut's resync (a short cut may lose no diff of a symbol)
        assert snapshots >= 2 and compared >= snapshots + 1
        book = service.router.states[symbol].book
        assert book is not None and book.synced and book.last_update_id is not None
        expected = offline_book(capture, symbol, True, book.last_update_id)
        assert (book.bids, book.asks) == (expected["bids"], expected["asks"])
    assert delta["mlrisk_feed_resyncs_total"] >= 2 + 1 + 2  # the first books, the withheld diff, the long cut


def test_spot_feed_rotates_with_overlap_over_split_connections(data_dir: Path, kafka: str, topic_prefix: str) -> None:
    folder = data_dir / "binance-spot-ws"
    files = [folder / f"{s}_{d}.gz" for s in ("btcusdt", "ethusdt") for d in ("20240808", "20240809")]
    capture = Capture.load(files, futures=False, start_s=200, duration_s=150)

    async def faults(server: FakeBinance) -> None:
        await server.wait_played(0.3)
        server.skip_depth("ETHUSDT")
        await server.wait_played(0.6)
        await server.drop(refuse_s=1.0)

    service, records, delta = asyncio.run(
        run_scenario(
            capture,
            "binance-spot",
            topic_prefix,
            ("trade", "bookTicker", "depth"),
            faults,
            MLRISK_FEED_ROTATE_AFTER_S="3",
            MLRISK_FEED_MAX_STREAMS="3",
        )
    )
    assert len(service.connections) == 2  # three streams a connection: one symbol each
    backfilled = check_trades(capture, records)
    assert backfilled == delta["mlrisk_feed_backfilled_trades_total"] > 0
    assert delta["rotate"] >= 4 and delta["mlrisk_feed_duplicates_total"] > 0
    assert check_bars_equal_replay(capture, folder, records) >= 2
    for symbol in ("BTCUSDT", "ETHUSDT"):
        compared, snapshots = check_books(capture, False, depth_events(records, symbol), symbol)
        assert snapshots >= 2 and compared >= snapshots + 1


class PrivateBroker:
    """A broker of this test's own (the shared one must never be stopped), from the project's kafka.sh."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        libs = REPO_ROOT / ".mlrisk" / "kafka" / "libs"
        (home / "kafka").mkdir(parents=True)
        (home / "kafka" / "libs").symlink_to(libs)  # the jars are fetched once, for the shared broker
        self.env = {
            **os.environ,
            "MLRISK_HOME": str(home),
            "MLRISK_KAFKA_PORT": str(self.port),
            "MLRISK_KAFKA_CONTROLLER_PORT": str(free_port()),
        }

    def run(self, action: str) -> None:
        subprocess.run(
            [str(REPO_ROOT / "ops" / "kafka" / "kafka.sh"), action],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def signal(self, sig: signal.Signals) -> None:
        os.kill(int((Path(self.env["MLRISK_HOME"]) / "kafka" / "kafka.pid").read_text()), sig)


@pytest.fixture
def private_broker(kafka: str, tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path / "home")
    broker.run("start")
    try:
        yield broker
    finally:
        broker.run("stop")


@pytest.mark.slow  # 20 s of outage, and a broker of its own to start
def test_feed_holds_back_while_kafka_is_unavailable_for_20_s(
    data_dir: Path, private_broker: PrivateBroker, topic_prefix: str
) -> None:
    capture = Capture.load([data_dir / "binance-futures-ws" / "btcusdt_20240808.gz"], futures=True)
    stopped_for_s: list[float] = []
    server_finished_before_kafka: list[bool] = []

    async def faults(server: FakeBinance) -> None:
        await server.wait_played(0.05)
        started = time.monotonic()
        # frozen rather than shut down: unavailable at once and back at once, without the JVM's restart time
        private_broker.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(20)
        finally:
            private_broker.signal(signal.SIGCONT)
        stopped_for_s.append(time.monotonic() - started)
        server_finished_before_kafka.append(server.finished.is_set())

    service, records, delta = asyncio.run(
        run_scenario(
            capture,
            "binance-usdm",
            topic_prefix,
            ("trade", "bookTicker", "depth"),
            faults,
            brokers=f"localhost:{private_broker.port}",
            MLRISK_FEED_BUFFER_MESSAGES="2000",
        )
    )
    assert stopped_for_s[0] >= 20 and not server_finished_before_kafka[0]
    assert delta["mlrisk_feed_buffer_overflows_total"] >= 1 and delta["overflow"] >= 1
    assert delta["mlrisk_feed_publish_failures_total"] == 0
    backfilled = check_trades(capture, records)
    assert backfilled == delta["mlrisk_feed_backfilled_trades_total"] > 100
    compared, snapshots = check_books(capture, True, depth_events(records, "BTCUSDT"), "BTCUSDT")
    assert snapshots >= 2 and compared >= snapshots + 1


def test_feed_command_resumes_after_a_restart_publishes_a_lost_gap_and_serves_health(
    data_dir: Path, kafka: str, topic_prefix: str
) -> None:
    folder = data_dir / "binance-spot-ws"
    capture = Capture.load(
        [folder / "btcusdt_20240808.gz", folder / "btcusdt_20240809.gz"], futures=False, start_s=60, duration_s=120
    )
    port = free_port()

    async def scenario() -> tuple[list[int], list[int], str, list[Any], list[Any], tuple[int, int]]:
        import aiohttp

        server = FakeBinance(capture, False, SPEED)
        address = await server.start()
        env = {
            **os.environ,
            "MLRISK_TOPIC_PREFIX": topic_prefix,
            "MLRISK_PARTITIONS": "2",
            "MLRISK_BINANCE_WS_URL": f"ws://{address}",
            "MLRISK_BINANCE_REST_URL": f"http://{address}",
            "MLRISK_FEED_PORT": str(port),
            "MLRISK_FEED_SILENCE_S": "2",
        }

        async def start_feed() -> asyncio.subprocess.Process:
            clients = len(server.clients)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "streams.ops.cli",
                "feed",
                "--venue",
                "binance-spot",
                "--symbols",
                "BTCUSDT",
                "--streams",
                "trade,depth",
                cwd=REPO_ROOT,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await asyncio.wait_for(server.wait_clients(clients + 1), 60)
            return process

        async def stop_feed(process: asyncio.subprocess.Process) -> int:
            process.send_signal(signal.SIGTERM)
            return await asyncio.wait_for(process.wait(), 30)

        statuses: list[int] = []
        codes: list[int] = []
        process = await start_feed()
        try:
            server.play()
            async with aiohttp.ClientSession() as http:

                async def health() -> int:
                    async with http.get(f"http://127.0.0.1:{port}/health") as response:
                        return response.status

                await server.wait_played(0.2)
                statuses.append(await health())  # connected and fed
                await server.drop(refuse_s=1.0)
                lost_from = server.trades["BTCUSDT"][-1]["id"] + 1
                await asyncio.sleep(0.5)
                server.forget_trades("BTCUSDT")  # what the cut missed can no longer be fetched
                lost_to = server.served_from["BTCUSDT"] - 1
                await server.wait_played(0.4)
                codes.append(await stop_feed(process))  # a restart: the next run resumes after its last trade
                await asyncio.sleep(0.5)
                process = await start_feed()
                await server.finished.wait()
                await asyncio.sleep(2.5)  # the feed has been silent longer than MLRISK_FEED_SILENCE_S
                statuses.append(await health())
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    metrics_text = await response.text()
            codes.append(await stop_feed(process))
        finally:
            if process.returncode is None:
                process.kill()
            await server.stop()
        records = await consume_all(f"{topic_prefix}market-data", None, timeout_s=30, idle_s=3)
        gaps = await consume_all(f"{topic_prefix}market-data-gaps", 1, timeout_s=30)
        return codes, statuses, metrics_text, records, gaps, (lost_from, lost_to)

    codes, statuses, metrics_text, records, gaps, (lost_from, lost_to) = asyncio.run(scenario())
    assert codes == [0, 0]
    assert statuses[0] == 200 and statuses[1] == 503
    # the restarted feed's own metrics: it back-filled what was traded while it was down
    assert 'mlrisk_feed_backfilled_trades_total{kind="trade",symbol="BTCUSDT"}' in metrics_text
    assert lost_to >= lost_from  # trades were played while the feed was cut off
    [gap] = [orjson.loads(record.value) for record in gaps]
    assert (gap["e"], gap["s"], gap["kind"], gap["first_id"], gap["last_id"]) == (
        "feedGap",
        "BTCUSDT",
        "trade",
        lost_from,
        lost_to,
    )
    lost = {line.data["t"] for line in capture.lines if line.kind == "trade" and lost_from <= line.data["t"] <= lost_to}
    kept = Capture(
        [line for line in capture.lines if line.kind != "trade" or line.data["t"] not in lost], capture.snapshots
    )
    check_trades(kept, records)  # every other trade once, in order, across the restart too


def test_feed_command_refuses_bad_settings_and_streams_naming_them() -> None:
    env = {**os.environ, "MLRISK_FEED_SILENCE_S": "never"}
    bad_setting = subprocess.run(
        [sys.executable, "-m", "streams.ops.cli", "feed", "--symbols", "BTCUSDT"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_setting.returncode == 2 and "MLRISK_FEED_SILENCE_S" in bad_setting.stderr
    bad_stream = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.ops.cli",
            "feed",
            "--venue",
            "binance-spot",
            "--symbols",
            "BTCUSDT",
            "--streams",
            "trade,markPrice",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_stream.returncode == 2 and "markPrice exists on binance-usdm only" in bad_stream.stderr
