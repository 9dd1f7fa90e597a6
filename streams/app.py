"""The Faust app: its topics, tables and agents, built from one Settings object."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from faust.streams import _current_event

from streams import faust_fixes, metrics
from streams.bar_builder import BarBuilder
from streams.config import Settings
from streams.ingest import CONTROL_HEADER, FLUSH, Ingest, dead_letter, wall_ms
from streams.serialization import dumps

log = logging.getLogger("mlrisk")

CLOSED_BARS_KEPT_MS = 3 * 86_400_000  # closed bars kept in the table (key "SYMBOL:open_time") for three days
IDLE_FLUSH_MS = 10_000  # a symbol quiet this long (wall clock) gets its finished minutes closed
INGEST_BATCH = 2_000  # messages per batch: bar state is written once per symbol and batch
INGEST_WITHIN_S = 0.005  # a batch waits at most this long for more messages


TABLE_NAMES = ("bar-state", "closed-bars", "engine-state", "paper-books")


async def ack_all(stream: Any, events: list[Any]) -> None:
    """Acknowledge a processed batch. Batches come from `batches`: a batch cut short (the worker stopping)
    is never acknowledged, so its messages are delivered again instead of being committed unprocessed."""
    for event in events:
        await stream.ack(event)


async def send_until_acknowledged(app: faust.App, topic: str, key: bytes, value: bytes,
                                  max_delay_s: float = 5.0) -> None:
    """Send and wait for the broker's acknowledgement, retrying a failed send with backoff.

    Raising instead would crash the agent, and Faust would restart it past the rest of the batch: messages
    skipped in this process while later ones move the state on.
    """
    delay = 0.1
    while True:
        try:
            await app.producer.send_and_wait(topic, key, value, None, None, None)
            return
        except KafkaError as error:
            metrics.ERRORS.labels("publish").inc()
            log.warning("publishing to %s failed (%r); retrying in %.1fs", topic, error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)


async def stop_on_unexpected(app: faust.App, stage: str, error: BaseException) -> None:
    """An unexpected error mid-batch stops the worker instead of letting the agent restart in place: a restart
    in place would continue after the batch's unprocessed messages, and state would move on without them.
    A new worker resumes from the committed offsets."""
    log.critical("%s stage failed; stopping the worker so that it resumes from committed offsets", stage,
                 exc_info=error)
    metrics.ERRORS.labels(stage).inc()
    await app.crash(error)


async def finish_despite_cancel(work: Awaitable[None], grace_s: float = 10.0) -> None:
    """Await `work`, and when the caller is cancelled (the worker stopping) let it end first, within `grace_s`.

    Publishing a bar and recording it as published are one step: cut between the two, the bar is out while the
    state says it is not, and the next worker would publish it a second time.
    """
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task}, timeout=grace_s)
        raise


async def batches(stream: Any, size: int, within_s: float) -> AsyncIterator[list[Any]]:
    """The stream in batches (`noack_take`) that the caller acknowledges itself (`ack_all`), once processed.

    When the loop ends (the agent cancelled, the worker stopping), the take's own clean-up turns the stream's
    acknowledgements back on and drops its buffering step, while the stream's background drainer goes on pulling
    buffered messages until the stream itself stops: each would be acknowledged unprocessed, and a commit could
    then skip a run of input. Acknowledgements are therefore turned off again after that clean-up: whatever the
    stream still pulls stays uncommitted and is delivered again.
    """
    takes = stream.noack_take(size, within=within_s)
    try:
        async for events in takes:
            yield events
    finally:
        await takes.aclose()
        stream.enable_acks = False


def in_partition_of(event: Any) -> None:
    """Make `event` the current one, so that table writes go to its partition's changelog.

    Batches (`take_events`) do not set the current event per message; table writes must land in the partition
    of the symbol they belong to, or a rebalance would restore them on the wrong worker.
    """
    _current_event.set(weakref.ref(event))


@dataclass(slots=True)
class Runtime:
    """What the worker's views and services share: the app, its topics and tables, and the ingest logic."""

    settings: Settings
    app: faust.App
    topics: dict[str, Any]
    tables: dict[str, Any]
    ingest: Ingest
    services: dict[str, Any] = field(default_factory=dict)


async def ensure_topics(settings: Settings) -> None:
    """Create the topics the system reads and writes, partitioned alike so one symbol's data is co-located."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        plain = (
            settings.market_data_topic,
            settings.dlq_topic,
            settings.bars_topic,
            settings.signals_topic,
            settings.executions_topic,
        )
        # changelog topics too: created here they exist before Faust's first write to them
        compacted = tuple(f"{settings.faust_app_id}-{table}-changelog" for table in TABLE_NAMES)
        wanted = [NewTopic(name, settings.partitions, 1) for name in plain if name not in existing] + [
            NewTopic(name, settings.partitions, 1, topic_configs={"cleanup.policy": "compact"})
            for name in compacted
            if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker created it first
                await admin.create_topics(wanted)
    finally:
        await admin.close()


def build_app(settings: Settings) -> Runtime:
    faust_fixes.apply()
    (settings.home / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.faust_app_id,
        broker=settings.kafka_brokers,
        store="memory://",
        datadir=str(settings.home / "faust"),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 5),
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_port=settings.web_port,
        web_host=settings.web_host,
        web_enabled=True,
        stream_wait_empty=False,
        table_standby_replicas=0,
        producer_acks=-1,
        producer_linger_ms=1,
    )
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    topics = {
        "market_data": app.topic(settings.market_data_topic, partitions=settings.partitions, **raw),
        "dlq": app.topic(settings.dlq_topic, partitions=settings.partitions, **raw),
        "bars": app.topic(settings.bars_topic, partitions=settings.partitions, **raw),
        "signals": app.topic(settings.signals_topic, partitions=settings.partitions, **raw),
        "executions": app.topic(settings.executions_topic, partitions=settings.partitions, **raw),
    }
    tables = {
        # str keys and JSON values through Faust's json codec, which is orjson when installed
        "bar_state": app.Table("bar-state", partitions=settings.partitions, key_type=str),
        "closed_bars": app.Table("closed-bars", partitions=settings.partitions, key_type=str),
        "engine_state": app.Table("engine-state", partitions=settings.partitions, key_type=str),
        "paper_books": app.Table("paper-books", partitions=settings.partitions, key_type=str),
    }
    ingest = Ingest(BarBuilder(settings.allowed_lateness_ms), tables["bar_state"], settings.max_future_ms)
    runtime = Runtime(settings, app, topics, tables, ingest)

    async def publish_bars(symbol: str, bars: list, received_ms: int) -> None:
        """`received_ms`: when the event that closed the bars arrived (the start of end-to-end latency)."""
        closed = tables["closed_bars"]
        for bar in bars:
            # waits for the broker's acknowledgement: a bar that the state records as closed is never lost
            await send_until_acknowledged(
                app, settings.bars_topic, symbol.encode(), dumps({**bar.to_dict(), "received_ms": received_ms})
            )
            closed[f"{symbol}:{bar.open_time}"] = bar.to_dict()
            expired = f"{symbol}:{bar.open_time - CLOSED_BARS_KEPT_MS}"
            if expired in closed:
                del closed[expired]

    @app.agent(topics["market_data"], name="ingest")
    async def ingest_agent(stream: Any) -> None:
        async for events in batches(stream, INGEST_BATCH, INGEST_WITHIN_S):
            last_event_of: dict[str, Any] = {}
            for event in events:
                try:
                    symbol = await ingest_one(event)
                except Exception as exc:
                    await stop_on_unexpected(app, "ingest", exc)
                    raise
                if symbol is not None:
                    last_event_of[symbol] = event
            # one changelog write per symbol and batch, in the partition of that symbol's own events; the
            # batch's offsets are committed only after these writes are flushed (Faust flushes before commit)
            for symbol, state in ingest.take_dirty().items():
                event = last_event_of.get(symbol)
                if event is not None:
                    in_partition_of(event)
                    tables["bar_state"][symbol] = state.to_dict()
            await ack_all(stream, events)

    async def publish_and_record(event: Any, bars: list, received: int) -> None:
        """Publish closed bars and record at once that they are out: a batch cut short and delivered again then
        recognises its trades and klines as applied and publishes nothing twice."""
        symbol = bars[0].symbol

        async def step() -> None:
            await publish_bars(symbol, bars, received)
            in_partition_of(event)
            tables["bar_state"][symbol] = ingest.state_for(symbol).to_dict()

        try:
            await finish_despite_cancel(step())
        except BaseException:
            # not published (the worker stopping, the broker away): forget the bars closed in memory, so that no
            # later write records them as published; the unacknowledged message comes back
            ingest.discard(symbol)
            raise

    async def ingest_one(event: Any) -> str | None:
        """Handle one message; the symbol whose bar state it may have changed, if any."""
        in_partition_of(event)
        message = event.message
        key = message.key
        if dict(message.headers or []).get(CONTROL_HEADER) == FLUSH and key is not None:
            symbol = key.decode()
            view = ingest.views.get(symbol)
            now = wall_ms()
            if view is not None and now - view.last_event_wall_ms >= IDLE_FLUSH_MS:
                bars = ingest.flush(symbol, now)
                if bars:
                    await publish_and_record(event, bars, now)
            return symbol
        received = wall_ms()
        try:
            result = ingest.handle(event.value, key, message.topic, message.partition, message.offset, received)
        except Exception as exc:  # a bug must not stop the worker: park the message with the reason
            log.exception("ingest failed on %s[%s]@%s", message.topic, message.partition, message.offset)
            metrics.ERRORS.labels("ingest").inc()
            metrics.EVENTS_REJECTED.labels("internal_error").inc()
            await topics["dlq"].send(
                key=key, value=dead_letter(f"internal_error: {exc!r}", message.topic, message.partition,
                                           message.offset, event.value, wall_ms())
            )
            return None
        if result.dead_letter is not None:
            await topics["dlq"].send(key=key, value=result.dead_letter)
            return None
        if result.rekey_symbol is not None:
            await topics["market_data"].send(key=result.rekey_symbol.encode(), value=event.value)
            return None
        if result.bars:
            await publish_and_record(event, result.bars, received)
        return key.decode() if result.state_changed and key is not None else None

    @app.timer(2.0)
    async def flush_quiet_symbols() -> None:
        """Ask the ingest agent (in-stream, where tables may change) to close bars of quiet symbols."""
        now = wall_ms()
        for symbol, view in list(ingest.views.items()):
            if now - view.last_event_wall_ms >= IDLE_FLUSH_MS and ingest.has_open_bars(symbol):
                await topics["market_data"].send(
                    key=symbol.encode(), value=b"", headers=[(CONTROL_HEADER, FLUSH)]
                )

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health_view(web: Any, request: Any) -> Any:
        checks = {name: check() for name, check in _health_checks(runtime).items()}
        ready = all(c["ok"] for c in checks.values())
        return web.json({"status": "ok" if ready else "degraded", "checks": checks}, status=200 if ready else 503)

    runtime.services["ingest_agent"] = ingest_agent
    from streams.pipeline import attach_pipeline

    attach_pipeline(runtime)
    return runtime


def _health_checks(runtime: Runtime) -> dict[str, Any]:
    def kafka() -> dict[str, Any]:
        consumer = runtime.app.consumer
        assigned = len(consumer.assignment()) if consumer is not None else 0
        return {"ok": runtime.app.producer is not None, "assigned_partitions": assigned}

    checks = {"kafka": kafka}
    for name, service in runtime.services.items():
        health = getattr(service, "health", None)
        if callable(health):
            checks[name] = health
    return checks
