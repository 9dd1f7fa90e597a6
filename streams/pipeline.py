"""The stages after ingest, in flow order: the signal agent (bars → decisions, paper execution), the sink agents
(signals and executions → the database), and the housekeeping beside them (model registry, service metrics,
consumer lag, event-loop lag, health).

Each agent is a method of one `Pipeline` object that holds what they share; `attach_pipeline` registers them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models.engine import SignalEngine, SymbolState
from models.registry import ModelBundle
from models.simulate import FillCosts
from streams import metrics
from streams.execution import PaperAccount, PaperBook, PaperBroker
from streams.health import Progress, healthy, stalled
from streams.ingest.events import BadEvent
from streams.ingest.rules import dead_letter, dead_letter_key
from streams.messages import InvalidMessage, check_execution, check_signal, decode_bar
from streams.runtime import (
    Activity,
    Pause,
    Runtime,
    Serving,
    ack_all,
    batches,
    in_partition_of,
    stop_on_unexpected,
)
from streams.serialization import dumps, loads
from streams.signals.model_switch import ModelSwitch
from streams.signals.stage import BarEvent, SignalStage
from streams.sink.db import database_url
from streams.sink.writer import PIECE, SINK_BATCH, Sink, event_row, metrics_row

log = logging.getLogger("mlrisk.pipeline")
LOOP_PROBE_S = 0.5  # the event-loop lag probe's sleep
SIGNAL_BATCH = 256  # bars per signal-stage batch: a minute boundary of a few hundred symbols is one or two batches
SIGNAL_QUIET_S = 0.003  # a lone bar waits this long for company; bars coming closer together go in one batch,
SIGNAL_LINGER_S = 0.025  # waiting for them at most this long
# what can wait (a sink batch, the monitors' measurements) waits at most this long, in all, while the signal stage
# has bars in hand: a minute boundary's burst goes first on the worker's one thread, and nothing waits for ever
YIELD_AT_MOST_S = 0.25


@dataclass(slots=True)
class ServiceCounters:
    """What happened since the last per-minute metrics row."""

    signals: int = 0
    executed: int = 0
    confidence_sum: float = 0.0
    risk_sum: float = 0.0
    latency_ms_sum: float = 0.0
    errors: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    def add_signal(self, signal: dict[str, Any]) -> None:
        self.signals += 1
        self.confidence_sum += signal["confidence_score"]
        self.risk_sum += signal["risk_score"]
        self.latency_ms_sum += signal["latency_ms"]
        self.by_type[signal["signal_type"]] = self.by_type.get(signal["signal_type"], 0) + 1


class Pipeline:
    """The signal and sink agents and their housekeeping, over what they share."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.risk_config = settings.risk
        self.runtime, self.settings, self.app = runtime, settings, runtime.app
        self.topics, self.tables = runtime.topics, runtime.tables
        broker = PaperBroker(
            PaperAccount(self.risk_config.equity_usdt, self.risk_config.limits),
            FillCosts(self.risk_config.taker_fee_rate, self.risk_config.slippage_bps),
        )
        self.serving = Serving(broker=broker, sink=Sink(database_url(settings)), switch=ModelSwitch(settings.model_dir))
        runtime.serving = self.serving
        self.counters = ServiceCounters()
        self.service_name = f"mlrisk-worker@{socket.gethostname()}"[:50]
        self.allowed = frozenset(settings.symbols)
        self.loop_lag_s = 0.0  # the largest wake-up delay of the last 5 s
        self.decisions = Progress()  # the signal agent's batches
        self.activity = Activity()  # whether the signal agent has bars in hand
        initial = self.serving.switch.load_initial() if "signals" in settings.worker_stages else None
        if initial is not None:
            self.serve(initial)

    @property
    def sink(self) -> Sink:
        return self.serving.sink

    @property
    def switch(self) -> ModelSwitch:
        return self.serving.switch

    def serve(self, bundle: ModelBundle) -> None:
        """Make `bundle` the version in service (between batches only: the signal agent takes it from the switch)."""
        serving = self.serving
        engine = SignalEngine(bundle, self.risk_config)
        if serving.stage is None:
            serving.stage = SignalStage(
                engine,
                self.tables["engine_state"],
                self.tables["paper_books"],
                serving.broker,
                self.settings.publish_hold,
            )
        else:
            serving.stage.swap(engine)
        if serving.bundle is not None:
            metrics.MODEL_INFO.labels(serving.bundle.version).set(0)
        metrics.MODEL_INFO.labels(bundle.version).set(1)
        serving.engine, serving.bundle = engine, bundle

    # the signal agent: bars → decisions, paper executions

    async def signal_agent(self, stream: Any) -> None:
        async for events in batches(stream, SIGNAL_BATCH, SIGNAL_LINGER_S, SIGNAL_QUIET_S, self.activity):
            self.decisions.begin()
            loaded = self.switch.take_loaded()
            if loaded is not None:  # between batches: every signal of a batch comes from one whole version
                self.serve(loaded)
            stage = self.serving.stage
            if stage is not None:
                items = await self.admitted_bars(events)
                try:
                    await stage.process(items, self.persist, self.emit)
                except Exception as exc:
                    self.counters.errors += 1
                    await stop_on_unexpected(self.app, "signals", exc)
                    raise
            await ack_all(stream, events)
            self.decisions.moved()

    async def admitted_bars(self, events: list[Any]) -> list[BarEvent]:
        """The batch's valid bars of admitted symbols; the others parked in the internal DLQ."""
        items: list[BarEvent] = []
        for event in events:
            try:
                bar = decode_bar(event.value)
                self.admit_to_stage(bar.symbol, items)
            except InvalidMessage as error:
                await self.park("bars", event, error)
                continue
            items.append(BarEvent(bar.to_bar(), bar.received_ms, event, bar.market))
        return items

    def admit_to_stage(self, symbol: str, batch: list[BarEvent]) -> None:
        """Ingest's symbol limits again, for what reaches `bars` by other ways: each symbol here costs an engine
        state (about 30 KB, in memory and in the changelog) and a paper book."""
        if self.allowed and symbol not in self.allowed:
            raise InvalidMessage("symbol_not_allowed", f"{symbol} is not in MLRISK_SYMBOLS")
        states = self.tables["engine_state"]
        if self.allowed or symbol in states or any(item.bar.symbol == symbol for item in batch):
            return
        fresh = {item.bar.symbol for item in batch if item.bar.symbol not in states}
        limit = self.settings.max_symbols
        if len(states) + len(fresh) >= limit:
            raise InvalidMessage(
                "too_many_symbols",
                f"{symbol} would be symbol {len(states) + len(fresh) + 1} of at most {limit} (MLRISK_MAX_SYMBOLS)",
            )

    def persist(self, item: BarEvent, symbol: str, state: SymbolState, paper: PaperBook) -> None:
        in_partition_of(item.event)
        self.tables["engine_state"][symbol] = state.to_bytes()
        papers = self.tables["paper_books"]
        if not paper.unchanged_since(papers.get(symbol)):  # a flat book is written when it changes, not every bar
            papers[symbol] = paper.to_dict()

    async def emit(self, signal: dict[str, Any] | None, executions: list[dict[str, Any]], item: BarEvent) -> None:
        key = item.bar.symbol.encode()
        if signal is not None:
            await self.publish("signals", key, dumps(signal))
            self.counters.add_signal(signal)
        for execution in executions:
            await self.publish("executions", key, dumps(execution))
            if execution["execution_status"] == "executed":
                self.counters.executed += 1
            elif execution["execution_status"] == "liquidated":
                metrics.LIQUIDATIONS.labels(item.bar.symbol).inc()

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        """Hand a message to the app's producer, keyed (the partitioner picks the symbol's partition), past
        Faust's per-message bookkeeping: a burst of symbols publishes hundreds at once. Faust flushes the producer
        before it commits the offsets of the bars that made them (at least once); a failed delivery is logged and
        counted."""
        delivery = await self.app.producer.send(self.topics[topic].get_topic_name(), key, value, None, None, None)
        delivery.add_done_callback(self._delivered)  # type: ignore[attr-defined]

    @staticmethod
    def _delivered(delivery: Any) -> None:
        if not delivery.cancelled() and delivery.exception() is not None:
            log.error("a message could not be delivered: %r", delivery.exception())
            metrics.ERRORS.labels("publish").inc()

    async def park(self, name: str, event: Any, error: InvalidMessage) -> None:
        """Send an invalid internal message to the internal DLQ (it is then acknowledged with its batch)."""
        metrics.INTERNAL_REJECTED.labels(name, error.reason).inc()
        log.error("an invalid message on %s was parked in %s: %s", name, self.settings.internal_dlq_topic, error)
        message = event.message
        await self.topics["internal_dlq"].send(
            key=dead_letter_key(event.key),
            value=dead_letter(
                BadEvent(error.reason, str(error)),
                message.topic,
                message.partition,
                message.offset,
                event.value,
                int(time.time() * 1000),
            ),
        )

    async def valid(
        self, name: str, events: list[Any], check: Callable[[bytes | None], None], pause: Pause | None = None
    ) -> list[Any]:
        """The events whose messages pass `check`, decoded; the others parked. With `pause`, awaited before every
        `PIECE` events."""
        kept = []
        for i, event in enumerate(events):
            if pause is not None and i % PIECE == 0:
                await pause()
            try:
                check(event.value)
            except InvalidMessage as error:
                await self.park(name, event, error)
                continue
            kept.append(loads(event.value))
        return kept

    # the sink agents: signals and executions → the database, acknowledged once durable

    async def sink_signals(self, stream: Any) -> None:
        async for events in batches(stream, SINK_BATCH, 0.5):
            pause = self.activity.pauses(YIELD_AT_MOST_S)
            signals = await self.valid("signals", events, check_signal, pause)
            await self.sink.write_signals(signals, time.time() * 1000, pause)
            await ack_all(stream, events)

    async def sink_executions(self, stream: Any) -> None:
        async for events in batches(stream, SINK_BATCH, 0.5):
            pause = self.activity.pauses(YIELD_AT_MOST_S)
            executions = await self.valid("executions", events, check_execution, pause)
            await self.sink.write_executions(executions, time.time() * 1000, pause)
            await ack_all(stream, events)

    # housekeeping

    async def follow_registry(self) -> None:
        await self.switch.poll()

    async def record_model_events(self) -> None:
        stage, name = self.serving.stage, self.service_name
        rows = []
        if stage is not None:
            await self.activity.yield_to(YIELD_AT_MOST_S)
            version = stage.engine.bundle.version
            stage.measure_monitors()
            rows = [event_row(e.pop("kind"), version, name, e) for e in stage.take_events()]
        rows += [event_row("swap", v, name, d) for v, d in self.switch.take_swaps()]
        rows += [event_row("load_failure", v, name, d) for v, d in self.switch.take_failures()]
        await self.sink.write("ml_model_events", rows)

    async def open_sink(self) -> None:
        await self.sink.open()

    async def database_probe(self) -> None:
        await self.sink.probe()

    async def event_loop_lag(self) -> None:
        """How late the loop wakes from a short sleep: work that blocks the loop shows here first."""
        loop = asyncio.get_running_loop()
        recent: deque[float] = deque(maxlen=int(5.0 / LOOP_PROBE_S))
        while True:
            started = loop.time()
            await asyncio.sleep(LOOP_PROBE_S)
            recent.append(max(0.0, loop.time() - started - LOOP_PROBE_S))
            self.loop_lag_s = max(recent)
            metrics.EVENT_LOOP_LAG.set(self.loop_lag_s)

    async def service_metrics(self) -> None:
        """One row per minute in ml_risk_integration_metrics, and the paper account's gauges."""
        snapshot, self.counters = self.counters, ServiceCounters()
        account = self.serving.broker.account
        books = [b.book for b in account.books.values()]
        trades = sum(b.trades for b in books)
        n = max(snapshot.signals, 1)
        trading_state = account.portfolio(int(time.time() * 1000)).trading_state
        row = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime()),
            "service_name": self.service_name,
            "signals_generated": snapshot.signals,
            "signals_executed": snapshot.executed,
            "average_confidence": round(snapshot.confidence_sum / n, 4),
            "average_risk_score": round(snapshot.risk_sum / n, 2),
            "success_rate": round(sum(b.wins for b in books) / trades, 4) if trades else None,
            "total_pnl": round(account.equity_usdt() - account.initial_equity_usdt, 2),
            "processing_time_ms": int(round(snapshot.latency_ms_sum / n)),
            "error_count": snapshot.errors,
            "metadata": {
                "signals_by_type": snapshot.by_type,
                "model_version": self.switch.serving,
                "trading_state": trading_state,
            },
        }
        metrics.TRADING_STATE.set(("ACTIVE", "REDUCING", "HALTED").index(trading_state))
        await self.sink.write("ml_risk_integration_metrics", [metrics_row(row)])

    async def consumer_lag(self) -> None:
        consumer = self.app.consumer
        for tp in consumer.assignment():
            try:
                position = await consumer.position(tp)
                highwater = consumer.highwater(tp)
            except Exception:  # a partition being revoked has no position: skip it this round
                continue
            if position is not None and highwater is not None:
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))

    # health

    def models_health(self, now: float) -> dict[str, Any]:
        """Stalled without a version in service, and while the registry names one that cannot be served (the
        version before it goes on serving meanwhile: the operator must still hear of it)."""
        switch = self.switch
        if switch.problem is not None:
            return stalled(switch.problem, version=switch.serving)
        if switch.serving is None:
            return stalled("no model version in service: train one (mlrisk train)")
        return healthy(version=switch.serving)

    def signals_health(self, now: float) -> dict[str, Any]:
        detail = {"last_batch_s_ago": round(self.decisions.idle_s(now), 1)}
        busy_s = self.decisions.busy_s(now)
        if busy_s > self.settings.health_stall_s:
            return stalled(f"a batch of bars has been in hand for {busy_s:.0f} s", **detail)
        return healthy(**detail)

    def sink_health(self, now: float) -> dict[str, Any]:
        return self.sink.health(now, self.settings.health_stall_s)

    def event_loop_health(self, now: float) -> dict[str, Any]:
        lag_s = round(self.loop_lag_s, 3)
        if self.loop_lag_s > self.settings.health_stall_s / 2:
            return stalled(f"the event loop woke {self.loop_lag_s:.1f} s late", lag_s=lag_s)
        return healthy(lag_s=lag_s)


def attach_pipeline(runtime: Runtime) -> Pipeline:
    """Register the agents, timers and health checks of this worker's stages (`MLRISK_WORKER_STAGES`: the signal
    stage, the sink, or both) on the runtime's app, in flow order. Both keep a database connection: the signal
    stage records model events and a row of service metrics a minute, and its API reads the tables."""
    pipeline = Pipeline(runtime)
    app, topics, stages = runtime.app, runtime.topics, runtime.settings.worker_stages
    checks: list[tuple[str, Callable[[float], dict[str, Any]]]] = []
    if "signals" in stages:
        app.agent(topics["bars"], name="signals")(pipeline.signal_agent)
        app.timer(runtime.settings.model_poll_s)(pipeline.follow_registry)
        app.timer(5.0)(pipeline.record_model_events)
        app.timer(60.0)(pipeline.service_metrics)
        checks += [("signals", pipeline.signals_health), ("models", pipeline.models_health)]
    if "sink" in stages:
        app.agent(topics["signals"], name="sink-signals")(pipeline.sink_signals)
        app.agent(topics["executions"], name="sink-executions")(pipeline.sink_executions)
    app.task(pipeline.open_sink)
    app.task(pipeline.event_loop_lag)
    app.timer(5.0)(pipeline.database_probe)
    app.timer(5.0)(pipeline.consumer_lag)
    checks += [("sink", pipeline.sink_health), ("event_loop", pipeline.event_loop_health)]
    for name, check in checks:
        runtime.health.register(name, check)
    return pipeline
