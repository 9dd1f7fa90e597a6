"""The Faust app: its topics, tables and agents, built from one Settings object."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from faust.streams import _current_event

from streams import faust_fixes, metrics
from streams.bar_builder import BarBuilder
from streams.book import OrderBook
from streams.config import Settings, SettingsError
from streams.health import HealthReport, Progress, healthy, stalled
from streams.ingest import Ingest
from streams.ingest_service import IngestService, state_topic
from streams.kafka_security import client_options, faust_credentials
from streams.web_auth import token_middleware

log = logging.getLogger("mlrisk")

TABLE_NAMES = ("engine-state", "paper-books")
BROKER_PROBE_S = 5.0  # how often the broker is asked for metadata, and how long it may take to answer


async def ack_all(stream: Any, events: list[Any]) -> None:
    """Acknowledge a processed batch. Batches come from `batches`: a batch cut short (the worker stopping)
    is never acknowledged, so its messages are delivered again instead of being committed unprocessed."""
    for event in events:
        await stream.ack(event)


async def stop_on_unexpected(app: faust.App, stage: str, error: BaseException) -> None:
    """An unexpected error mid-batch stops the worker instead of letting the agent restart in place: a restart
    in place would continue after the batch's unprocessed messages, and state would move on without them.
    A new worker resumes from the committed offsets."""
    log.critical("%s stage failed; stopping the worker so that it resumes from committed offsets", stage,
                 exc_info=error)
    metrics.ERRORS.labels(stage).inc()
    await app.crash(error)


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
    health: HealthReport
    services: dict[str, Any] = field(default_factory=dict)


async def ensure_topics(settings: Settings) -> None:
    """Create the topics the system reads and writes, partitioned alike so one symbol's data is co-located.

    With MLRISK_CREATE_TOPICS=false (an administrator provisions topics) they are only checked: a missing one
    stops start-up with its name."""
    plain = (
        settings.market_data_topic,
        settings.dlq_topic,
        settings.internal_dlq_topic,
        settings.bars_topic,
        settings.signals_topic,
        settings.executions_topic,
    )
    # changelog topics too: created here they exist before Faust's first write to them
    compacted = (state_topic(settings), *(f"{settings.faust_app_id}-{table}-changelog" for table in TABLE_NAMES))
    replicas = settings.kafka_replication_factor
    await create_missing_topics(
        client_options(settings),
        [NewTopic(name, settings.partitions, replicas) for name in plain]
        + [NewTopic(name, settings.partitions, replicas, topic_configs={"cleanup.policy": "compact"})
           for name in compacted]
        # Faust's leader election topic: one partition
        + [NewTopic(f"{settings.faust_app_id}-__assignor-__leader", 1, replicas)],
        create=settings.create_topics,
    )


async def create_missing_topics(options: dict[str, Any], topics: list[NewTopic], *, create: bool = True) -> None:
    """Create those of `topics` the broker lacks; return once its metadata lists them (at most about 30 s).

    `options`: the client options of `streams.kafka_security.client_options`. With `create` false, a missing
    topic raises SettingsError naming it."""
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [topic for topic in topics if topic.name not in existing]
        if wanted and not create:
            raise SettingsError(
                "MLRISK_CREATE_TOPICS is false and the broker lacks these topics (or does not let this user see "
                f"them): {', '.join(sorted(topic.name for topic in wanted))}"
            )
        if wanted:
            refused = creation_errors(await admin.create_topics(wanted))
            if refused:
                raise TopicCreationError("the broker refused to create " + "; ".join(refused))
            # a broker just started answers the creation before its metadata lists the topics; a consumer that
            # subscribes in between ignores them as missing until its next metadata refresh, minutes later
            names = {topic.name for topic in wanted}
            for _ in range(150):
                if names <= set(await admin.list_topics()):
                    break
                await asyncio.sleep(0.2)
            else:
                missing = sorted(names - set(await admin.list_topics()))
                raise TopicCreationError(f"topics created but not listed by the broker after 30 s: {missing}")
    finally:
        await admin.close()


class TopicCreationError(RuntimeError):
    """The broker did not create a topic the worker needs (not authorised, bad replication factor, ...)."""


def creation_errors(response: Any) -> list[str]:
    """'topic: error' for each topic a CreateTopics response refused; a topic that already exists (another worker
    created it first) is no error. aiokafka returns these per topic instead of raising them."""
    refused = []
    for entry in getattr(response, "topic_errors", []):
        name, code = entry[0], entry[1]
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        message = entry[2] if len(entry) > 2 and entry[2] else for_code(code).__name__
        refused.append(f"{name}: {message} (error {code})")
    return refused


def build_app(settings: Settings) -> Runtime:
    faust_fixes.apply()
    (settings.home / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.faust_app_id,
        broker=settings.kafka_brokers,
        store="memory://",
        datadir=str(settings.home / "faust"),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        topic_allow_declare=settings.create_topics,
        broker_credentials=faust_credentials(settings),
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 5),
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_port=settings.web_port,
        web_host=settings.web_host,
        web_bind=settings.web_bind,
        web_application_options=_web_options(settings),
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
        "internal_dlq": app.topic(settings.internal_dlq_topic, partitions=settings.partitions, **raw),
        "bars": app.topic(settings.bars_topic, partitions=settings.partitions, **raw),
        "signals": app.topic(settings.signals_topic, partitions=settings.partitions, **raw),
        "executions": app.topic(settings.executions_topic, partitions=settings.partitions, **raw),
    }
    tables = {
        # str keys and JSON values through Faust's json codec, which is orjson when installed
        "engine_state": app.Table("engine-state", partitions=settings.partitions, key_type=str),
        "paper_books": app.Table("paper-books", partitions=settings.partitions, key_type=str),
    }
    ingest = Ingest(BarBuilder(settings.allowed_lateness_ms), {}, settings.max_future_ms, book_factory=OrderBook,
                    symbols=settings.symbols, max_symbols=settings.max_symbols)
    runtime = Runtime(settings, app, topics, tables, ingest, HealthReport(settings.health_stall_s))
    # started once the tables are recovered; Faust takes a service instance as well as a class
    service = IngestService(settings, ingest, app.crash)
    runtime.services["ingest"] = app.service(service)  # type: ignore[arg-type]
    broker = Progress()

    @app.timer(BROKER_PROBE_S)
    async def broker_probe() -> None:
        """A metadata request on the ingest consumer's connection: does the broker answer at all?"""
        if service.consumer is None:
            return
        try:
            await asyncio.wait_for(service.consumer.topics(), BROKER_PROBE_S)
        except Exception as error:  # the broker away or refusing: health says so
            broker.failed(repr(error))
        else:
            broker.moved()

    def kafka_health(now: float) -> dict[str, Any]:
        consumer = app.consumer
        detail = {"assigned_partitions": len(consumer.assignment()) if consumer is not None else 0}
        if broker.idle_s(now) > settings.health_stall_s:
            return stalled(f"the broker has not answered for {broker.idle_s(now):.0f} s"
                           + (f" ({broker.failure})" if broker.failure else ""), **detail)
        return healthy(**detail)

    runtime.health.register("kafka", kafka_health)
    runtime.health.register("ingest", lambda now: service.health(now, settings.health_stall_s))

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health_view(web: Any, request: Any) -> Any:
        status, body = runtime.health.body()
        return web.json(body, status=status)

    @app.page("/health/ready")
    async def ready_view(web: Any, request: Any) -> Any:
        status, body = runtime.health.body()
        return web.json(body, status=status)

    @app.page("/health/live")
    async def live_view(web: Any, request: Any) -> Any:
        return web.json({"status": "alive"})

    from streams.pipeline import attach_pipeline

    attach_pipeline(runtime)
    return runtime


def _web_options(settings: Settings) -> dict[str, Any]:
    """aiohttp's Application options: the token check on every request when tokens are configured."""
    middleware = token_middleware(settings)
    return {"middlewares": [middleware]} if middleware is not None else {}
