"""The feed: websocket connections → duplicate check, trade back-fill, order-book sync → `market-data`.

Every message is published unchanged, keyed by its symbol, once: a message whose id (trade `t`, aggregate
trade `a`, book update `u`, else event time `E`) is not above the last one published on its stream is an
overlap and is dropped. A trade id above the last one plus one is a gap: the missing trades are fetched from
REST and published first, in order. On every connection the trades since the last published one are fetched
before anything else is handled; a restarted feed reads its last trade ids back from `market-data`. A trade gap
that cannot be filled is published on `market-data-gaps` and counted.
Depth diffs go through Binance's local-order-book procedure; when it needs a snapshot, one is fetched and, once
a diff bridges it, the book as of that diff is published right after it as `{"e": "depthSnapshot", "s": SYMBOL,
"lastUpdateId", "bids", "asks"}` (and the REST snapshot's `E`, `T`), which the worker's book takes as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiokafka.admin import NewTopic
from prometheus_client import CONTENT_TYPE_LATEST

from streams import metrics as process_metrics
from streams.config import Settings
from streams.feed import metrics
from streams.feed.backfill import missed
from streams.feed.book_sync import MAX_LEVELS_PER_SIDE, DepthSync, Diff, Outcome
from streams.feed.connection import MAX_URL_CHARS, Overflow, StreamConnection, stream_url
from streams.feed.publisher import Publisher
from streams.feed.rest import BinanceRest, RestError
from streams.feed.resume import last_trade_ids
from streams.feed.venues import STREAM_KINDS, Venue
from streams.kafka_security import client_options
from streams.web_auth import token_middleware

log = logging.getLogger(__name__)

MAX_BACKFILL_TRADES = 100_000  # per gap: at 1,000 a page, a few minutes of the REST weight budget
SNAPSHOT_RETRY_S = 1.0
STOP_GRACE_S = 3.0  # at a stop, how long the message in hand and a snapshot being fetched may take to finish
ID_KEYS = {"trade": "t", "aggTrade": "a", "depth": "u", "bookTicker": "u"}
TRADE_KINDS = ("trade", "aggTrade")


def stream_kind(stream: str) -> str:
    """`btcusdt@depth@100ms` → `depth`; `btcusdt@kline_1m` → `kline_1m`."""
    return stream.split("@", 2)[1] if "@" in stream else ""


@dataclass(slots=True)
class SymbolState:
    """What the feed keeps per symbol: its book, the last id published per stream kind, a resync under way."""

    symbol: str
    book: DepthSync | None
    last_ids: dict[str, int] = field(default_factory=dict)  # stream kind → last published id (or event time)
    snapshot_task: asyncio.Task[None] | None = None
    snapshot_pending: bool = False  # a snapshot taken, to be published once a diff bridges it
    snapshot_meta: dict[str, Any] = field(default_factory=dict)  # its E and T (USD-M)


class FeedRouter:
    """Everything between the connections and Kafka; one instance for all connections."""

    def __init__(
        self,
        venue: Venue,
        symbols: Iterable[str],
        kinds: Iterable[str],
        rest: BinanceRest,
        publisher: Publisher,
        gaps_topic: str,
        overflow_s: float,
    ) -> None:
        self.venue = venue
        self.kinds = tuple(kinds)
        self.rest = rest
        self.publisher = publisher
        self.gaps_topic = gaps_topic
        self.overflow_s = overflow_s
        self.states = {
            s: SymbolState(s, DepthSync(futures=venue.futures) if "depth" in self.kinds else None) for s in symbols
        }

    def _parse(self, raw: bytes) -> tuple[SymbolState, str, dict[str, Any], int | None] | None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(message, dict) or not isinstance(message.get("stream"), str):
            return None
        data = message.get("data")
        stream: str = message["stream"]
        state = self.states.get(stream.split("@", 1)[0].upper())
        if state is None or not isinstance(data, dict):
            return None
        kind = stream_kind(stream)
        key = data.get(ID_KEYS.get(kind, "E"))
        return state, kind, data, key if isinstance(key, int) and not isinstance(key, bool) else None

    def published(self, raw: bytes) -> tuple[str, bool] | None:
        """(stream, whether this message was already published), or None for a message without a stream."""
        parsed = self._parse(raw)
        if parsed is None:
            return None
        state, kind, _, key = parsed
        last = state.last_ids.get(kind)
        return f"{state.symbol}@{kind}", key is not None and last is not None and key <= last

    async def handle(self, raw: bytes) -> None:
        """Publish one websocket message unless it is a repeat, after any trades it shows were missed."""
        parsed = self._parse(raw)
        if parsed is None:
            metrics.MESSAGES.labels(stream="other").inc()
            log.debug("ignored a message without a known stream: %.200r", raw)
            return
        state, kind, data, key = parsed
        metrics.MESSAGES.labels(stream=kind).inc()
        last = state.last_ids.get(kind)
        if key is not None and last is not None and key <= last:
            metrics.DUPLICATES.labels(stream=kind).inc()
            return
        if kind in TRADE_KINDS and key is not None and last is not None and key > last + 1:
            metrics.GAPS.labels(kind=kind, symbol=state.symbol).inc()
            await self._backfill(state, kind, until_id=key)
        await self._publish(state.symbol, raw)
        if key is not None:
            state.last_ids[kind] = key
        event_time = data.get("E")
        if isinstance(event_time, int):
            metrics.EXCHANGE_LAG.observe(max(0.0, time.time() - event_time / 1000.0))
        if kind == "depth" and state.book is not None:
            self._on_diff(state, data)
            if state.snapshot_pending and state.book.synced:
                await self._publish_snapshot(state)

    async def catch_up(self, streams: list[str]) -> None:
        """Before a new connection's messages: publish the trades since the last one published (none known on a
        first start without earlier output)."""
        for stream in streams:
            kind = stream_kind(stream)
            state = self.states.get(stream.split("@", 1)[0].upper())
            if kind in TRADE_KINDS and state is not None and kind in state.last_ids:
                await self._backfill(state, kind, until_id=None)

    async def wait_drained(self) -> None:
        """Until Kafka has acknowledged every message handed over."""
        await self.publisher.flush()  # every message acknowledged: Kafka is back

    async def _backfill(self, state: SymbolState, kind: str, until_id: int | None) -> None:
        from_id = state.last_ids[kind] + 1
        stream = self.venue.stream_name(state.symbol, kind)
        expected = from_id
        try:
            async for page in missed(self.rest, state.symbol, kind, stream, from_id, until_id, MAX_BACKFILL_TRADES):
                if page[0][0] > expected:
                    await self._gap_event(state.symbol, kind, expected, page[0][0] - 1, "no longer served by REST")
                for trade_id, message in page:
                    await self._publish(state.symbol, message)
                    state.last_ids[kind] = trade_id
                metrics.BACKFILLED.labels(kind=kind, symbol=state.symbol).inc(len(page))
                expected = page[-1][0] + 1
        except RestError as error:
            log.error("back-fill of %s %s from %d failed: %s", state.symbol, kind, expected, error)
        if until_id is not None and expected < until_id:
            await self._gap_event(state.symbol, kind, expected, until_id - 1, "back-fill incomplete")

    async def _gap_event(self, symbol: str, kind: str, first_id: int, last_id: int, reason: str) -> None:
        metrics.UNFILLED_GAPS.labels(kind=kind, symbol=symbol).inc()
        log.error("%s %s ids %d..%d are lost: %s", symbol, kind, first_id, last_id, reason)
        event = {
            "e": "feedGap",
            "s": symbol,
            "kind": kind,
            "first_id": first_id,
            "last_id": last_id,
            "reason": reason,
            "E": int(time.time() * 1000),
        }
        await self._publish(symbol, orjson.dumps(event), self.gaps_topic)

    async def _publish(self, symbol: str, value: bytes, topic: str | None = None) -> None:
        # reading stops while Kafka takes nothing (backpressure); past overflow_s the connection is replaced, and
        # the new one back-fills and resyncs once Kafka is back
        try:
            async with asyncio.timeout(self.overflow_s):
                await self.publisher.publish(symbol, value, topic)
        except TimeoutError:
            metrics.BUFFER_OVERFLOWS.inc()
            raise Overflow(f"Kafka took nothing for {self.overflow_s:g} s") from None

    def _on_diff(self, state: SymbolState, data: dict[str, Any]) -> None:
        assert state.book is not None
        try:
            diff = Diff.from_message(data)
        except ValueError as error:
            log.warning("%s: %s", state.symbol, error)
            return
        outcome = state.book.on_diff(diff)
        if outcome is Outcome.GAP:
            state.snapshot_pending = False  # it cannot be bridged: a consumer must not take it
            metrics.GAPS.labels(kind="depth", symbol=state.symbol).inc()
            log.warning(
                "%s: depth diff out of sequence (U=%d u=%d pu=%s); resyncing",
                state.symbol,
                diff.first_id,
                diff.last_id,
                diff.previous_id,
            )
        if not state.book.synced and state.book.snapshot_id is None:
            self._request_snapshot(state)

    def _request_snapshot(self, state: SymbolState) -> None:
        if state.snapshot_task is None or state.snapshot_task.done():
            state.snapshot_task = asyncio.create_task(self._snapshot(state))

    async def _snapshot(self, state: SymbolState) -> None:
        assert state.book is not None
        while True:
            try:
                body = await self.rest.depth_snapshot(state.symbol)
            except RestError as error:
                log.error("%s: depth snapshot failed: %s", state.symbol, error)
                await asyncio.sleep(SNAPSHOT_RETRY_S)
                continue
            log.info("%s: snapshot %d fetched", state.symbol, body["lastUpdateId"])
            try:
                state.book.on_snapshot(body["lastUpdateId"], body["bids"], body["asks"])
            except ValueError as error:
                log.error("%s: unusable depth snapshot: %s", state.symbol, error)
                await asyncio.sleep(SNAPSHOT_RETRY_S)
                continue
            state.snapshot_meta = {k: body[k] for k in ("E", "T") if isinstance(body.get(k), int)}
            state.snapshot_pending = True
            if state.book.synced:
                await self._publish_snapshot(state)  # bridged by a buffered diff
                return
            if state.book.snapshot_id is not None:
                return  # published by `handle` after the diff that bridges it
            log.warning(
                "%s: snapshot %d older than the buffered diffs; fetching another", state.symbol, body["lastUpdateId"]
            )
            await asyncio.sleep(SNAPSHOT_RETRY_S)

    async def _publish_snapshot(self, state: SymbolState) -> None:
        """Publish the book as of the last diff published: the REST snapshot with the diffs that bridged it
        applied, `lastUpdateId` that diff's `u`. A consumer takes it and chains the next diff on it, without
        having to hold on to the diffs published while the snapshot was being fetched (the worker's book keeps
        a bounded number of them)."""
        book = state.book
        assert book is not None and book.last_update_id is not None
        state.snapshot_pending = False
        bids = sorted(book.bids.items(), reverse=True)[:MAX_LEVELS_PER_SIDE]
        asks = sorted(book.asks.items())[:MAX_LEVELS_PER_SIDE]
        message = orjson.dumps(
            {
                "e": "depthSnapshot",
                "s": state.symbol,
                "lastUpdateId": book.last_update_id,
                **state.snapshot_meta,
                "bids": bids,
                "asks": asks,
            }
        )
        metrics.RESYNCS.labels(symbol=state.symbol).inc()
        # waits for room but never overflows: the book already counts on this snapshot being published
        await self.publisher.publish(state.symbol, message)

    async def close(self) -> None:
        """Let the snapshots under way be fetched and published within the grace; cancel what is left."""
        await finish_or_cancel([s.snapshot_task for s in self.states.values() if s.snapshot_task], STOP_GRACE_S)


async def finish_or_cancel(tasks: list[asyncio.Task[None]], grace_s: float) -> None:
    """Wait up to `grace_s` for the tasks to end by themselves, then cancel the rest and wait for them."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace_s)
    for task in pending:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def connection_groups(
    venue: Venue, base_url: str, symbols: list[str], kinds: tuple[str, ...], max_streams: int
) -> list[list[str]]:
    """Stream names split over connections: a symbol's streams stay together; within the stream and URL limits."""
    limit = min(max_streams, venue.max_streams_per_connection)
    groups: list[list[str]] = []
    current: list[str] = []
    for symbol in symbols:
        names = [venue.stream_name(symbol, kind) for kind in kinds]
        candidate = current + names
        if current and (len(candidate) > limit or len(stream_url(base_url, candidate)) > MAX_URL_CHARS):
            groups.append(current)
            candidate = names
        current = candidate
    if current:
        groups.append(current)
    return groups


def check_request(venue: Venue, symbols: list[str], kinds: tuple[str, ...]) -> None:
    """Raise ValueError naming what is wrong with the symbols or streams asked for."""
    if not symbols:
        raise ValueError("--symbols: at least one symbol")
    for symbol in symbols:
        if not symbol.isalnum() or not 3 <= len(symbol) <= 20:
            raise ValueError(f"--symbols: {symbol!r} is not a symbol like BTCUSDT")
    if len(kinds) > venue.max_streams_per_connection:
        raise ValueError(f"--streams: at most {venue.max_streams_per_connection}")
    for kind in kinds:
        if kind not in STREAM_KINDS:
            raise ValueError(f"--streams: {kind!r} is not one of {', '.join(STREAM_KINDS)}")
        if kind == "markPrice" and not venue.futures:
            raise ValueError("--streams: markPrice exists on binance-usdm only")


class FeedService:
    """The whole `mlrisk feed` process: connections, router, publisher, REST, /health and /metrics."""

    def __init__(self, settings: Settings, venue: Venue, symbols: list[str], kinds: tuple[str, ...]) -> None:
        check_request(venue, symbols, kinds)
        self.settings = settings
        self.venue = venue
        self.symbols = symbols
        self.kinds = kinds
        self.ws_url = settings.binance_ws_url or venue.ws_url
        self.rest = BinanceRest(venue, settings.binance_rest_url or venue.rest_url, settings.binance_api_key)
        self.kafka_options = client_options(settings)
        self.publisher = Publisher(self.kafka_options, settings.market_data_topic, settings.feed_buffer_messages)
        self.router = FeedRouter(
            venue,
            symbols,
            kinds,
            self.rest,
            self.publisher,
            settings.topic("market-data-gaps"),
            overflow_s=settings.feed_silence_s,
        )
        self.connections = [
            StreamConnection(
                f"{venue.name}#{i}",
                self.ws_url,
                streams,
                self.router,
                settings.feed_silence_s,
                settings.feed_rotate_after_s,
            )
            for i, streams in enumerate(
                connection_groups(venue, self.ws_url, symbols, kinds, settings.feed_max_streams)
            )
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self._web: web.AppRunner | None = None

    async def start(self, serve_http: bool = False) -> None:
        """Create the topics, connect; with `serve_http`, /health and /metrics on MLRISK_WEB_BIND:MLRISK_FEED_PORT."""
        from streams.topics import create_missing_topics

        await create_missing_topics(
            self.kafka_options,
            [
                NewTopic(name, self.settings.partitions, self.settings.kafka_replication_factor)
                for name in (self.settings.market_data_topic, self.settings.topic("market-data-gaps"))
            ],
            create=self.settings.create_topics,
        )
        await self.publisher.start()
        for (symbol, kind), trade_id in (
            await last_trade_ids(self.kafka_options, self.settings.market_data_topic, set(self.symbols))
        ).items():
            if kind in self.kinds:
                self.router.states[symbol].last_ids[kind] = trade_id  # a restart back-fills from there
        self._tasks = [asyncio.create_task(c.run(), name=c.name) for c in self.connections]
        if serve_http:
            self._web = web.AppRunner(self._web_app())
            await self._web.setup()
            await web.TCPSite(self._web, self.settings.web_bind, self.settings.feed_port).start()

    async def stop(self) -> None:
        """Close the connections, publish what is buffered (within MLRISK_STOP_TIMEOUT_S) and disconnect."""
        for connection in self.connections:
            await connection.stop()
        # each connection stops after the message in hand (a diff and the snapshot it bridges are published
        # together, or a consumer's book would end out of sync); a reader idle on its socket looks up every
        # second; one still held (a back-fill meeting 429s, Kafka away) is cancelled after the grace
        await finish_or_cancel(self._tasks, STOP_GRACE_S)
        await self.router.close()
        try:  # what Kafka acknowledges within the stop timeout; a broker that is away must not hold the stop
            await asyncio.wait_for(self.publisher.stop(), self.settings.stop_timeout_s)
        except TimeoutError:
            log.error("Kafka did not acknowledge everything within %.0f s of the stop", self.settings.stop_timeout_s)
        await self.rest.close()
        if self._web is not None:
            await self._web.cleanup()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details): every connection open and recently active, books synced, Kafka acknowledging."""
        now = time.monotonic()
        connections = {
            c.name: {"connected": c.connected, "silent_s": round(now - c.last_message_at, 3)} for c in self.connections
        }
        books = {s: st.book.synced for s, st in self.router.states.items() if st.book is not None}
        healthy = (
            all(c.connected and now - c.last_message_at < self.settings.feed_silence_s for c in self.connections)
            and self.publisher.failures == 0
        )
        return healthy, {
            "status": "ok" if healthy else "degraded",
            "venue": self.venue.name,
            "connections": connections,
            "books_synced": books,
            "buffer_fill": round(self.publisher.fill, 4),
            "publish_failures": self.publisher.failures,
        }

    def _web_app(self) -> web.Application:
        async def health(_: web.Request) -> web.Response:
            healthy, body = self.health()
            return web.Response(
                body=orjson.dumps(body), status=200 if healthy else 503, content_type="application/json"
            )

        async def metrics_view(_: web.Request) -> web.Response:
            return web.Response(body=process_metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        auth = token_middleware(self.settings)  # the worker's rules: /health open, /metrics per setting
        middlewares: list[Any] = [auth] if auth is not None else []
        app = web.Application(middlewares=middlewares)
        app.router.add_get("/health", health)
        app.router.add_get("/metrics", metrics_view)
        return app


async def run_feed(settings: Settings, venue: Venue, symbols: list[str], kinds: tuple[str, ...]) -> None:
    """Run until cancelled (SIGINT/SIGTERM), then publish what is buffered and stop."""
    import signal

    service = FeedService(settings, venue, symbols, kinds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.start(serve_http=True)
    log.info("feed: %d symbol(s), %d connection(s) to %s", len(symbols), len(service.connections), service.ws_url)
    try:
        await stop.wait()
    finally:
        await service.stop()
