"""The stages after ingest: signals (with paper execution), the database sink, service metrics and the API."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models.engine import SignalEngine, SymbolState
from models.registry import ModelBundle
from models.simulate import FillCosts
from risk.config import RiskConfig
from streams import metrics
from streams.app import Runtime, ack_all, batches, in_partition_of, stop_on_unexpected
from streams.config import SettingsError
from streams.db import database_url
from streams.events import BadEvent
from streams.execution import PaperAccount, PaperBook, PaperBroker
from streams.health import Progress, healthy, stalled
from streams.ingest import dead_letter, dead_letter_key
from streams.messages import InvalidMessage, check_execution, check_signal, decode_bar
from streams.model_switch import ModelSwitch
from streams.serialization import dumps, loads
from streams.signals import BarEvent, SignalStage
from streams.sink import SINK_BATCH, Sink, event_row, metrics_row

log = logging.getLogger("mlrisk.pipeline")
LOOP_PROBE_S = 0.5  # the event-loop lag probe's sleep
SIGNAL_BATCH = 256  # bars per signal-stage batch: a minute boundary of a few hundred symbols is one or two batches


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


def attach_pipeline(runtime: Runtime) -> None:
    settings, app, topics, tables = runtime.settings, runtime.app, runtime.topics, runtime.tables
    try:
        risk_config = RiskConfig.from_env(os.environ)
    except ValueError as error:
        raise SettingsError(str(error)) from None
    broker = PaperBroker(PaperAccount(risk_config.equity_usdt, risk_config.limits),
                         FillCosts(risk_config.taker_fee_rate, risk_config.slippage_bps))
    sink = Sink(database_url(settings))
    counters = ServiceCounters()
    runtime.services.update(broker=broker, risk_config=risk_config, counters=counters)
    service_name = f"mlrisk-worker@{socket.gethostname()}"[:50]

    def serve(bundle: ModelBundle) -> None:
        """Make `bundle` the version in service (between batches only: the signal agent takes it from `switch`)."""
        engine = SignalEngine(bundle, risk_config)
        current: SignalStage | None = runtime.services.get("stage")
        if current is None:
            current = SignalStage(engine, tables["engine_state"], tables["paper_books"], broker,
                                  settings.publish_hold)
        else:
            current.swap(engine)
        previous = runtime.services.get("bundle")
        if previous is not None:
            metrics.MODEL_INFO.labels(previous.version).set(0)
        metrics.MODEL_INFO.labels(bundle.version).set(1)
        runtime.services.update(engine=engine, stage=current, bundle=bundle)

    switch = ModelSwitch(settings.model_dir)
    initial = switch.load_initial()
    if initial is not None:
        serve(initial)
    runtime.services["model_switch"] = switch

    @app.timer(settings.model_poll_s)
    async def follow_registry() -> None:
        await switch.poll()

    @app.timer(5.0)
    async def record_model_events() -> None:
        stage = runtime.services.get("stage")
        rows = []
        if stage is not None:
            version = stage.engine.bundle.version
            rows = [event_row(e.pop("kind"), version, service_name, e) for e in stage.take_events()]
        rows += [event_row("swap", v, service_name, d) for v, d in switch.take_swaps()]
        rows += [event_row("load_failure", v, service_name, d) for v, d in switch.take_failures()]
        await sink.write("ml_model_events", rows)

    @app.task
    async def open_sink() -> None:
        await sink.open()

    @app.timer(5.0)
    async def database_probe() -> None:
        await sink.probe()

    loop_lag = [0.0]  # the largest wake-up delay of the last 5 s
    decisions = Progress()  # the signal agent's batches

    @app.task
    async def event_loop_lag() -> None:
        """How late the loop wakes from a short sleep: work that blocks the loop shows here first."""
        loop = asyncio.get_running_loop()
        recent: deque[float] = deque(maxlen=int(5.0 / LOOP_PROBE_S))
        while True:
            started = loop.time()
            await asyncio.sleep(LOOP_PROBE_S)
            recent.append(max(0.0, loop.time() - started - LOOP_PROBE_S))
            loop_lag[0] = max(recent)
            metrics.EVENT_LOOP_LAG.set(loop_lag[0])

    def persist(item: BarEvent, symbol: str, state: SymbolState, paper: PaperBook) -> None:
        in_partition_of(item.event)
        tables["engine_state"][symbol] = state.to_bytes().decode()
        tables["paper_books"][symbol] = paper.to_dict()

    async def emit(signal: dict[str, Any] | None, executions: list[dict[str, Any]], item: BarEvent) -> None:
        key = item.bar.symbol.encode()
        if signal is not None:
            await topics["signals"].send(key=key, value=dumps(signal))
            counters.add_signal(signal)
        for execution in executions:
            await topics["executions"].send(key=key, value=dumps(execution))
            if execution["execution_status"] == "executed":
                counters.executed += 1
            elif execution["execution_status"] == "liquidated":
                metrics.LIQUIDATIONS.labels(item.bar.symbol).inc()

    async def park(name: str, event: Any, error: InvalidMessage) -> None:
        """Send an invalid internal message to the internal DLQ (it is then acknowledged with its batch)."""
        metrics.INTERNAL_REJECTED.labels(name, error.reason).inc()
        log.error("an invalid message on %s was parked in %s: %s", name, settings.internal_dlq_topic, error)
        message = event.message
        await topics["internal_dlq"].send(key=dead_letter_key(event.key), value=dead_letter(
            BadEvent(error.reason, str(error)), message.topic, message.partition, message.offset, event.value,
            int(time.time() * 1000)))

    async def valid(name: str, events: list[Any], check: Callable[[bytes | None], None]) -> list[Any]:
        """The events whose messages pass `check`; the others parked."""
        kept = []
        for event in events:
            try:
                check(event.value)
            except InvalidMessage as error:
                await park(name, event, error)
                continue
            kept.append(event)
        return kept

    allowed = frozenset(settings.symbols)

    def admit_to_stage(symbol: str, batch: list[BarEvent]) -> None:
        """Ingest's symbol limits again, for what reaches `bars` by other ways: each symbol here costs an engine
        state (about 44 KB, in memory and in the changelog) and a paper book."""
        if allowed and symbol not in allowed:
            raise InvalidMessage("symbol_not_allowed", f"{symbol} is not in MLRISK_SYMBOLS")
        states = tables["engine_state"]
        if allowed or symbol in states or any(item.bar.symbol == symbol for item in batch):
            return
        fresh = {item.bar.symbol for item in batch if item.bar.symbol not in states}
        if len(states) + len(fresh) >= settings.max_symbols:
            raise InvalidMessage("too_many_symbols", f"{symbol} would be symbol {len(states) + len(fresh) + 1} "
                                                     f"of at most {settings.max_symbols} (MLRISK_MAX_SYMBOLS)")

    @app.agent(topics["bars"], name="signals")
    async def signal_agent(stream: Any) -> None:
        async for events in batches(stream, SIGNAL_BATCH, 0.003):  # a bar waits at most 3 ms for company
            decisions.begin()
            loaded = switch.take_loaded()
            if loaded is not None:  # between batches: every signal of a batch comes from one whole version
                serve(loaded)
            stage = runtime.services.get("stage")
            if stage is None:
                await ack_all(stream, events)
                decisions.moved()
                continue
            items: list[BarEvent] = []
            for event in events:
                try:
                    bar = decode_bar(event.value)
                    admit_to_stage(bar.symbol, items)
                except InvalidMessage as error:
                    await park("bars", event, error)
                    continue
                items.append(BarEvent(bar.to_bar(), bar.received_ms, event, bar.market))
            try:
                await stage.process(items, persist, emit)
            except Exception as exc:
                counters.errors += 1
                await stop_on_unexpected(app, "signals", exc)
                raise
            await ack_all(stream, events)
            decisions.moved()

    @app.agent(topics["signals"], name="sink-signals")
    async def sink_signals(stream: Any) -> None:
        async for events in batches(stream, SINK_BATCH, 0.5):
            await sink.write_signals([loads(e.value) for e in await valid("signals", events, check_signal)],
                                     time.time() * 1000)
            await ack_all(stream, events)

    @app.agent(topics["executions"], name="sink-executions")
    async def sink_executions(stream: Any) -> None:
        async for events in batches(stream, SINK_BATCH, 0.5):
            await sink.write_executions([loads(e.value) for e in await valid("executions", events, check_execution)],
                                        time.time() * 1000)
            await ack_all(stream, events)

    @app.timer(60.0)
    async def service_metrics() -> None:
        """One row per minute in ml_risk_integration_metrics, and the paper account's gauges."""
        snapshot = ServiceCounters(**{f: getattr(counters, f) for f in ServiceCounters.__dataclass_fields__})
        counters.__init__()  # type: ignore[misc]
        account = broker.account
        books = [b.book for b in account.books.values()]
        trades = sum(b.trades for b in books)
        n = max(snapshot.signals, 1)
        row = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime()),
            "service_name": service_name,
            "signals_generated": snapshot.signals,
            "signals_executed": snapshot.executed,
            "average_confidence": round(snapshot.confidence_sum / n, 4),
            "average_risk_score": round(snapshot.risk_sum / n, 2),
            "success_rate": round(sum(b.wins for b in books) / trades, 4) if trades else None,
            "total_pnl": round(account.equity_usdt() - account.initial_equity_usdt, 2),
            "processing_time_ms": int(round(snapshot.latency_ms_sum / n)),
            "error_count": snapshot.errors,
            "metadata": {"signals_by_type": snapshot.by_type, "model_version": switch.serving,
                         "trading_state": account.portfolio(int(time.time() * 1000)).trading_state},
        }
        trading_state = row["metadata"]["trading_state"]  # type: ignore[index]
        metrics.TRADING_STATE.set(("ACTIVE", "REDUCING", "HALTED").index(trading_state))
        await sink.write("ml_risk_integration_metrics", [metrics_row(row)])

    @app.timer(5.0)
    async def consumer_lag() -> None:
        consumer = app.consumer
        for tp in consumer.assignment():
            try:
                position = await consumer.position(tp)
                highwater = consumer.highwater(tp)
            except Exception:  # a partition being revoked has no position: skip it this round
                continue
            if position is not None and highwater is not None:
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))

    stall_s = settings.health_stall_s

    def models_health(now: float) -> dict[str, Any]:
        """Stalled without a version in service, and while the registry names one that cannot be served (the
        version before it goes on serving meanwhile: the operator must still hear of it)."""
        if switch.problem is not None:
            return stalled(switch.problem, version=switch.serving)
        if switch.serving is None:
            return stalled("no model version in service: train one (mlrisk train)")
        return healthy(version=switch.serving)

    def signals_health(now: float) -> dict[str, Any]:
        detail = {"last_batch_s_ago": round(decisions.idle_s(now), 1)}
        if decisions.busy_s(now) > stall_s:
            return stalled(f"a batch of bars has been in hand for {decisions.busy_s(now):.0f} s", **detail)
        return healthy(**detail)

    def event_loop_health(now: float) -> dict[str, Any]:
        if loop_lag[0] > stall_s / 2:
            return stalled(f"the event loop woke {loop_lag[0]:.1f} s late", lag_s=round(loop_lag[0], 3))
        return healthy(lag_s=round(loop_lag[0], 3))

    runtime.health.register("signals", signals_health)
    runtime.health.register("sink", lambda now: sink.health(now, stall_s))
    runtime.health.register("models", models_health)
    runtime.health.register("event_loop", event_loop_health)
    runtime.services["database"] = sink

    from streams.web import register_api

    register_api(runtime)
