"""The composition root: the Faust app built from one Settings object, with the stages attached in flow order.

market-data → ingest (`streams.ingest.service`) → bars → signals (`streams.pipeline`, `streams.signals.stage`) →
signals, executions → sink (`streams.sink.writer`); the HTTP API (`streams.web`) and health beside them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import faust
from aiokafka import TopicPartition

from streams import faust_fixes, metrics
from streams.config import Settings
from streams.health import HealthReport, Progress, healthy, stalled
from streams.ingest.bars import BarBuilder
from streams.ingest.book import OrderBook
from streams.ingest.rules import Ingest
from streams.ingest.service import IngestService
from streams.kafka_security import PRODUCER_BATCH_BYTES, faust_credentials
from streams.pipeline import attach_pipeline
from streams.runtime import Runtime
from streams.web import register_api
from streams.web_auth import token_middleware

log = logging.getLogger("mlrisk")

BROKER_PROBE_S = 5.0  # how often the broker is asked for an end offset, and how long it may take to answer
GC_YOUNG_OBJECTS = 10_000  # allocations between collections of the youngest generation (see freeze_start_up_heap)


def build_app(settings: Settings) -> Runtime:
    """The worker: its app, topics and tables, then the stages in flow order: ingest, the pipeline, the API.

    `MLRISK_WORKER_STAGES` picks the stages of this process (all by default): the signal stage may run in a
    process of its own, with ingest and the sink in another, so that the event loop that decides a minute
    boundary's bars does nothing else."""
    faust_fixes.apply()
    app = _faust_app(settings)
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    topics = {
        name: app.topic(topic, partitions=settings.partitions, **raw)
        for name, topic in (
            ("market_data", settings.market_data_topic),
            ("dlq", settings.dlq_topic),
            ("internal_dlq", settings.internal_dlq_topic),
            ("bars", settings.bars_topic),
            ("signals", settings.signals_topic),
            ("executions", settings.executions_topic),
        )
    }
    stages = settings.worker_stages
    tables = (
        {
            # str keys through Faust's json codec (orjson when installed); the engine state is bytes of its own
            # format (`SymbolState.to_bytes`), kept as they are (Faust's raw codec for a bytes value type); the
            # paper book is JSON
            "engine_state": app.Table("engine-state", partitions=settings.partitions, key_type=str, value_type=bytes),
            "paper_books": app.Table("paper-books", partitions=settings.partitions, key_type=str),
        }
        if "signals" in stages
        else {}  # the tables are the signal stage's: a worker without it neither restores nor joins them
    )
    ingest = Ingest(
        BarBuilder(settings.allowed_lateness_ms),
        {},
        settings.max_future_ms,
        book_factory=OrderBook,
        symbols=settings.symbols,
        max_symbols=settings.max_symbols,
    )
    runtime = Runtime(settings, app, topics, tables, ingest, HealthReport(settings.health_stall_s))
    service = attach_ingest(runtime) if "ingest" in stages else None
    attach_broker_health(runtime, service)
    if "signals" in stages or "sink" in stages:
        attach_pipeline(runtime)
    if "signals" in stages:  # the API answers from the signal stage's live state
        register_api(runtime)
    attach_operations(runtime)
    return runtime


def _faust_app(settings: Settings) -> faust.App:
    (settings.home / "faust").mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.faust_group_id,
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
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
    )


def attach_ingest(runtime: Runtime) -> IngestService:
    """Ingest's own consumer loop (started once the tables are recovered) and its health."""
    settings = runtime.settings
    service = IngestService(settings, runtime.ingest, runtime.app.crash)
    runtime.app.service(service)  # type: ignore[arg-type]  # Faust takes a service instance as well as a class
    runtime.health.register("ingest", lambda now: service.health(now, settings.health_stall_s))
    return service


def attach_broker_health(runtime: Runtime, service: IngestService | None) -> None:
    """A broker probe on a timer, and the kafka health check: is the broker answering, and how many partitions
    are assigned to this worker (Faust's consumer's; ingest's where the worker only ingests)."""
    app, settings = runtime.app, runtime.settings
    broker = Progress()
    stages = settings.worker_stages
    first_read = (
        settings.market_data_topic
        if "ingest" in stages
        else settings.bars_topic
        if "signals" in stages
        else settings.signals_topic
    )
    probe_partition = TopicPartition(first_read, 0)
    faust_reads = "signals" in stages or "sink" in stages

    async def broker_probe() -> None:
        """A small request, the end offset of one partition this worker reads: does the broker answer at all?
        (Not the metadata of every topic: on a cluster of thousands of topics, decoding that holds the event
        loop for tens of milliseconds.) On ingest's consumer where this worker ingests, else on Faust's."""
        try:
            if service is not None:
                if service.consumer is None:
                    return
                await asyncio.wait_for(service.consumer.end_offsets([probe_partition]), BROKER_PROBE_S)
            else:
                if app.consumer is None:
                    return
                await asyncio.wait_for(app.consumer.highwaters(probe_partition), BROKER_PROBE_S)
        except Exception as error:  # the broker away or refusing: health says so
            broker.failed(repr(error))
        else:
            broker.moved()

    def kafka_health(now: float) -> dict[str, Any]:
        if faust_reads:
            assigned = len(app.consumer.assignment()) if app.consumer is not None else 0
        else:  # ingest alone: the partitions of market-data it owns
            assigned = len(service.owned) if service is not None else 0
        detail = {"assigned_partitions": assigned}
        if broker.idle_s(now) > settings.health_stall_s:
            return stalled(
                f"the broker has not answered for {broker.idle_s(now):.0f} s"
                + (f" ({broker.failure})" if broker.failure else ""),
                **detail,
            )
        return healthy(**detail)

    app.timer(BROKER_PROBE_S)(broker_probe)
    runtime.health.register("kafka", kafka_health)


def attach_operations(runtime: Runtime) -> None:
    """/metrics, and health for orchestrators: /health and /health/ready (progress), /health/live (the process)."""
    app = runtime.app

    async def freeze_start_up_heap() -> None:
        """What start-up built (modules, models, clients) leaves the collector's generations: a full collection
        then walks only what the stream made since, so that its pause stays short while many symbols decide.
        The youngest generation is collected every GC_YOUNG_OBJECTS allocations instead of 700: a burst of
        symbols allocates thousands of objects that live for its batch, and at 700 they were promoted and walked
        again in the older generations (about 30 µs a symbol-bar, and pauses of 10 ms); a young collection now
        takes a few milliseconds, and the older ones seldom come."""
        gc.freeze()
        gc.set_threshold(GC_YOUNG_OBJECTS, 10, 10)

    app.task(freeze_start_up_heap)

    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    async def ready_view(web: Any, request: Any) -> Any:
        status, body = runtime.health.body()
        return web.json(body, status=status)

    async def live_view(web: Any, request: Any) -> Any:
        return web.json({"status": "alive"})

    app.page("/metrics")(metrics_view)
    app.page("/health")(ready_view)
    app.page("/health/ready")(ready_view)
    app.page("/health/live")(live_view)


def _web_options(settings: Settings) -> dict[str, Any]:
    """aiohttp's Application options: the token check on every request when tokens are configured."""
    middleware = token_middleware(settings)
    return {"middlewares": [middleware]} if middleware is not None else {}
